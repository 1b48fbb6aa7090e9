/**
 * Running `deno run -A main.ts ...` as a user does, in a subprocess with a hard timeout, and
 * reading its JSON summary (the last stdout line with --json).
 */

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

export interface VpmdRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run vpmd with `args`; killed after `timeoutMs`. */
export async function runVpmd(args: string[], timeoutMs = 60_000): Promise<VpmdRun> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  try {
    const out = await child.output();
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
  } finally {
    clearTimeout(killer);
  }
}

/** The summary object: the last line of a --json run's stdout. */
// deno-lint-ignore no-explicit-any
export function summaryOf(r: VpmdRun): any {
  const lines = r.stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}
