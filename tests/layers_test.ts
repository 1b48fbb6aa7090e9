/**
 * The direction of the imports (README "Where things are"): the rings and queues (mod/virtio)
 * import nothing above them, the forwarder knows no transport by name, and the library (mod.ts,
 * mod/) neither parses a command line nor imports the CLI (cli/, main.ts).
 */
import assert from "assert";
import { dirname, join, relative } from "node:path";

const REPO = new URL("..", import.meta.url).pathname;

/** Relative import and re-export specifiers of a module, resolved to repository paths. */
function importsOf(file: string): string[] {
  const text = Deno.readTextFileSync(join(REPO, file));
  const out: string[] = [];
  // Statements only (import/export at the start of a line, or the `} from` that closes one):
  // examples in doc comments start with ` * ` and are not imports of the module.
  const re =
    /^(?:import|export)\s+(?:type\s+)?(?:\{[^}]*\}|\*(?:\s+as\s+\w+)?|\w+(?:\s*,\s*\{[^}]*\})?)\s+from\s+"([^"]+)"|^import\s+"([^"]+)"/gm;
  for (const m of text.matchAll(re)) {
    const spec = m[1] ?? m[2];
    out.push(spec.startsWith(".") ? relative(REPO, join(REPO, dirname(file), spec)) : spec);
  }
  return out;
}

function tsFiles(dir: string): string[] {
  const found: string[] = [];
  for (const e of Deno.readDirSync(join(REPO, dir))) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) found.push(...tsFiles(path));
    else if (e.name.endsWith(".ts")) found.push(path);
  }
  return found;
}

const LIBRARY = ["mod.ts", ...tsFiles("mod")];
const GRAPH = new Map(LIBRARY.map((f) => [f, importsOf(f)]));

/** Every module `file` reaches through its imports (within the library). */
function reach(file: string, seen = new Set<string>()): Set<string> {
  for (const dep of GRAPH.get(file) ?? []) {
    if (seen.has(dep)) continue;
    seen.add(dep);
    reach(dep, seen);
  }
  return seen;
}

const inVirtio = (f: string) => f.startsWith("mod/virtio/");

Deno.test("layers: the import scan sees the imports it must judge", () => {
  assert.ok(importsOf("mod/port.ts").includes("mod/virtio/rx_queue.ts"));
  assert.ok(importsOf("mod.ts").includes("mod/port.ts"));
});

Deno.test("layers: mod/virtio imports nothing above it", () => {
  // Above the rings: the port and what opens it, the transports, the forwarder, the CLI.
  const above = /^(mod\/(port|open|portspec)\.ts|mod\/(transport|sim|pci|fwd)\/|cli\/|main\.ts)/;
  for (const file of LIBRARY.filter(inVirtio)) {
    for (const dep of GRAPH.get(file)!) {
      assert.doesNotMatch(dep, above, `${file} imports ${dep}`);
      if (inVirtio(dep) || !dep.startsWith("mod/")) continue;
      // A module beside the rings that builds on them is above them too.
      const back = [...reach(dep)].find(inVirtio);
      assert.equal(back, undefined, `${file} imports ${dep}, which imports ${back}`);
    }
  }
});

Deno.test("layers: the forwarder knows no transport by name", () => {
  for (const file of LIBRARY.filter((f) => f.startsWith("mod/fwd/"))) {
    for (const dep of GRAPH.get(file)!) {
      assert.doesNotMatch(dep, /^mod\/(sim|transport|pci)\//, `${file} imports ${dep}`);
    }
  }
});

Deno.test("layers: the library neither parses a command line nor imports the CLI", () => {
  for (const [file, deps] of GRAPH) {
    for (const dep of deps) {
      assert.doesNotMatch(dep, /^(cli\/|main\.ts$|cli-args$)/, `${file} imports ${dep}`);
    }
  }
});
