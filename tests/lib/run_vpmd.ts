/** Running `main.ts` as a user does, in a subprocess with a hard timeout. */

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run `deno run -A main.ts ARGS` (killed after `timeoutMs`); `v8Flags` go to Deno. */
export async function vpmd(
  args: string[],
  timeoutMs = 60_000,
  v8Flags: string[] = [],
): Promise<Run> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...v8Flags, MAIN, ...args],
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

/** The JSON summary: the last line of stdout. */
// deno-lint-ignore no-explicit-any
export function summaryOf(r: Run): any {
  const lines = r.stdout.trim().split("\n");
  try {
    return JSON.parse(lines[lines.length - 1]);
  } catch {
    throw new Error(`no JSON summary (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  }
}
