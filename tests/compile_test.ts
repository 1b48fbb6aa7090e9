/**
 * `deno task compile`: one executable that carries everything vpmd loads at run time.
 *
 * Building needs Deno's `denort` runtime for this Deno version, which `deno compile` downloads on
 * first use and keeps in DENO_DIR/dl; without network access point DENORT_BIN at an unpacked
 * `denort`. When neither is there, the build test is skipped with one line saying so.
 */
import assert from "assert";
import { dirname, join, relative } from "node:path";

const REPO = new URL("..", import.meta.url).pathname;
const config = JSON.parse(Deno.readTextFileSync(join(REPO, "deno.json")));
const COMPILE: string[] = (config.tasks.compile as string).split(/\s+/);

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Where `deno compile` keeps the denort it downloaded for this version and target. */
function cachedDenort(): string {
  const home = Deno.env.get("HOME") ?? "";
  const cache = Deno.env.get("XDG_CACHE_HOME") ?? join(home, ".cache");
  const denoDir = Deno.env.get("DENO_DIR") ?? join(cache, "deno");
  const zip = `denort-${Deno.build.target}.zip`;
  return join(denoDir, "dl", "release", `v${Deno.version.deno}`, zip);
}

const denortBin = Deno.env.get("DENORT_BIN");
const haveDenort = denortBin !== undefined ? isFile(denortBin) : isFile(cachedDenort());
if (!haveDenort) {
  console.error(
    `skipping the compiled-binary test: no denort for Deno ${Deno.version.deno} ` +
      (denortBin !== undefined
        ? `(DENORT_BIN=${denortBin} is no file). `
        : `in ${cachedDenort()}. `) +
      `Run 'deno task compile' once with network access, or set DENORT_BIN to the denort ` +
      `unpacked from denort-${Deno.build.target}.zip of Deno ${Deno.version.deno}.`,
  );
}

/** Module files that a source file under mod/ starts as a Worker, relative to the repo. */
function workerModules(): string[] {
  const found: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(dir)) {
      const path = join(dir, e.name);
      if (e.isDirectory) walk(path);
      else if (e.name.endsWith(".ts")) {
        const text = Deno.readTextFileSync(path);
        const re = /new Worker\(\s*new URL\(\s*"([^"]+)",\s*import\.meta\.url\s*\)/g;
        for (const m of text.matchAll(re)) found.push(relative(REPO, join(dirname(path), m[1])));
      }
    }
  };
  walk(join(REPO, "mod"));
  return found;
}

Deno.test("compile: the task embeds every worker module and no node_modules", () => {
  const workers = workerModules();
  assert.ok(workers.length > 0, "no `new Worker(new URL(...))` found under mod/");
  const included = COMPILE.flatMap((a, i) => (COMPILE[i - 1] === "--include" ? [a] : []));
  for (const w of workers) {
    assert.ok(included.includes(w), `deno task compile lacks --include ${w}`);
  }
  // The repository's node_modules holds the Deno binary itself (~95 MB) and nothing vpmd imports.
  assert.ok(
    COMPILE.includes("--no-npm"),
    `deno task compile lacks --no-npm: ${config.tasks.compile}`,
  );
});

async function run(cmd: string, args: string[], cwd: string): Promise<Deno.CommandOutput> {
  const child = new Deno.Command(cmd, {
    args,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const killer = setTimeout(() => child.kill("SIGKILL"), 300_000);
  try {
    return await child.output();
  } finally {
    clearTimeout(killer);
  }
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test({
  name: "compile: the binary runs help and forwards between two sim ports",
  ignore: !haveDenort,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "vpmd-compile-" });
    try {
      const out = join(dir, "vpmd");
      // The task as written, with this Deno and the output in the temporary folder.
      const args = COMPILE.slice(1).map((a, i) => (COMPILE[i] === "--output" ? out : a));
      const built = await run(Deno.execPath(), args, REPO);
      assert.equal(built.code, 0, text(built.stderr));

      const help = await run(out, ["help"], dir);
      assert.equal(help.code, 0, text(help.stderr));
      assert.match(text(help.stdout), /^Usage:$/m);

      const fwd = await run(out, ["fwd", "sim:a", "sim:b", "--duration", "1", "--json"], dir);
      assert.equal(fwd.code, 0, text(fwd.stderr));
      const summary = JSON.parse(text(fwd.stdout).trim().split("\n").at(-1)!);
      assert.ok(summary.totals.rxPackets > 0, "the compiled vpmd forwarded nothing");
      assert.equal(summary.accounting.ok, true, summary.accounting.message);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
