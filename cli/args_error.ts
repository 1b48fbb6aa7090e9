/**
 * One-line messages for the errors of the argument parser (`parseArgs`, node:util or
 * @std/cli): its own texts advise on quoting positionals and span several lines.
 */

/** The message for a parse error of `command`'s arguments, saying what to do. */
export function argsErrorMessage(e: unknown, command: string): string {
  const err = e as { code?: string; message?: string };
  const msg = String(err.message ?? e);
  const flag = msg.match(/'(-{1,2}[^' <]+)/)?.[1] ?? "";
  switch (err.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown flag '${flag}' for 'vpmd ${command}'; see 'vpmd help'`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return msg.includes("ambiguous")
        ? `${flag}: its value may not start with '-' (write ${flag}=VALUE if you mean it)`
        : `${flag} needs a value`;
    default:
      return msg.split("\n")[0];
  }
}
