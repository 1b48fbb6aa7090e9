/**
 * A short soak (scripts/soak.ts): one round of every combination of ring kind and misbehaviour,
 * mergeable buffers, in order and pool size, with link flaps and stop/start cycles under traffic; at every
 * round's end every frame is accounted for, every buffer is back in the pool and nothing threw.
 */
import assert from "assert";
import { COMBINATIONS, describe, soak, summarize } from "../scripts/soak.ts";
import { EVIL_MODES, PACKED_ONLY_EVIL, SPLIT_ONLY_EVIL } from "../mod/sim/device.ts";

Deno.test("soak: every ring kind and misbehaviour, every mergeable / in-order / pool setting; accounting and pool hold", async () => {
  const seed = 7;
  // Round numbers 0, 4, 8, ...: each ring kind and misbehaviour twice, each of the eight
  // mergeable / in-order / pool settings at least three times (COMBINATIONS = 13 * 8).
  const rounds = Math.ceil(COMBINATIONS / 4);
  const results = await soak({ frames: 0, rounds, stride: 4, roundFrames: 4000, seed });
  const failed = results.filter((r) => r.failures.length > 0);
  assert.deepEqual(
    failed.map((r) => `${describe(r.config)}: ${r.failures.join("; ")}`),
    [],
    summarize(results, seed),
  );
  const configs = results.map((r) => r.config);
  for (const packed of [false, true]) {
    const evils = EVIL_MODES.filter((m) =>
      !(packed ? SPLIT_ONLY_EVIL : PACKED_ONLY_EVIL).includes(m)
    );
    for (const evil of [null, ...evils]) {
      assert.ok(
        configs.some((c) => c.packed === packed && c.evil === evil),
        `no round with packed=${packed} evil=${evil}`,
      );
    }
  }
  for (const mrg of [false, true]) {
    for (const inOrder of [false, true]) {
      for (const small of [false, true]) {
        assert.ok(
          configs.some((c) => c.mrg === mrg && c.inOrder === inOrder && c.small === small),
          `no round with mrg=${mrg} in_order=${inOrder} small=${small}`,
        );
      }
    }
  }
  assert.ok(results.reduce((a, r) => a + r.flaps, 0) > 0, "link flaps");
  assert.ok(results.reduce((a, r) => a + r.cycles, 0) > 0, "stop/start cycles");
  assert.ok(results.reduce((a, r) => a + r.errorsInjected, 0) > 0, "errors injected");
  assert.ok(configs.some((c) => c.sizes.some((s) => s > 1514)), "frames above 1514 bytes");
  assert.ok(
    configs.some((c) => c.indirect) && configs.some((c) => !c.indirect),
    "indirect on, off",
  );
});
