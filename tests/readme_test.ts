/**
 * The README's library example: there, and importing only from mod.ts, the library's entry
 * point. `deno task test` runs the example itself (`--doc README.md`), so it cannot rot.
 */
import assert from "assert";

const SECTION = "## Using vpmd as a library";

Deno.test("README: the library example imports only from mod.ts", () => {
  const text = Deno.readTextFileSync(new URL("../README.md", import.meta.url));
  const start = text.indexOf(`\n${SECTION}\n`);
  assert.ok(start >= 0, `README.md has no '${SECTION}' section`);
  const next = text.indexOf("\n## ", start + SECTION.length);
  const section = text.slice(start, next < 0 ? undefined : next);
  const blocks = [...section.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  assert.ok(blocks.length > 0, `'${SECTION}' has no \`\`\`ts example`);
  for (const code of blocks) {
    const specifiers = [...code.matchAll(/\bfrom\s+"([^"]+)"|\bimport\s*\(\s*"([^"]+)"/g)]
      .map((m) => m[1] ?? m[2]);
    assert.ok(specifiers.length > 0, `an example imports nothing:\n${code}`);
    assert.deepEqual([...new Set(specifiers)], ["./mod.ts"]);
  }
});

Deno.test("README: deno task test runs the README's examples", () => {
  const config = JSON.parse(Deno.readTextFileSync(new URL("../deno.json", import.meta.url)));
  const task = (config.tasks.test as string).split(/\s+/);
  assert.ok(task.includes("--doc") && task.includes("README.md"), config.tasks.test);
});
