/** Run a command to its end; its stdout, or an error with its stderr when it fails. */
export async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** `taskset` arguments that run `deno run -A ARGS` pinned to CPU 0, where every front-end runs. */
export function pinnedDeno(args: string[]): string[] {
  return ["-c", "0", Deno.execPath(), "run", "-A", ...args];
}

/**
 * The command line of bench-vhost.ts's vpmd side (`script` is that file in some checkout): test
 * `test` on the vhost-user socket `sock` for `seconds`, then `extra` options. The one place the
 * child's arguments are spelled out (bench-vhost.ts, bench-ab.ts and vhost-profile.ts run it).
 */
export function childArgs(
  script: string,
  test: string,
  sock: string,
  seconds: number,
  extra: string[] = [],
): string[] {
  return [
    script,
    "--child",
    "--test",
    test,
    "--path",
    sock,
    "--seconds",
    String(seconds),
    ...extra,
  ];
}
