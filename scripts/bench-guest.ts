/**
 * Forwarding rate of vpmd and of DPDK testpmd in the same QEMU guest (scripts/lab/), same traffic:
 * the host offers 64-byte test frames to the legacy NIC (0000:00:04.0) at a ladder of rates, the
 * guest io-forwards them to the modern NIC (0000:00:05.0), the host counts valid frames coming
 * back. Runs alternate vpmd / testpmd. Prints, per forwarder and offered rate, the received rate and
 * loss, then the best rate each reached with at most 1 % loss (medians over the rounds).
 *
 *   sudo deno run -A scripts/bench-guest.ts [--rates 5000,10000,20000,40000] [--seconds 3]
 *       [--rounds 2] [--size 64]
 *
 * Under TCG the guest CPU, not the driver, is the ceiling (LAB-NOTES): this compares the two
 * drivers in the same conditions; it says nothing about bare-metal speed.
 */
import { parseArgs } from "cli-args";
import { Guest, type GuestNic } from "./lab/run-guest.ts";
import { type ForwardingResult, FrameChecker, generate, measureForwarding } from "./lab/traffic.ts";

const LOSS_OK_PCT = 1;

interface Forwarder {
  name: string;
  start(g: Guest, a: GuestNic, b: GuestNic): Promise<() => Promise<void>>;
}

/** Waits until frames offered to `a` come out of `b` (the forwarder is up). */
async function untilForwarding(a: GuestNic, b: GuestNic, timeoutSec = 120): Promise<void> {
  const checker = new FrameChecker(b.wire);
  try {
    const end = performance.now() + timeoutSec * 1000;
    while (!(await checker.waitFor(1, 1))) {
      if (performance.now() > end) throw new Error("the forwarder never forwarded a frame");
      await generate(a.wire, { count: 20, rate: 1000, stream: 8 });
    }
    await checker.settle(300);
  } finally {
    checker.detach();
  }
}

const vpmd: Forwarder = {
  name: "vpmd",
  async start(g, a, b) {
    // No periodic statistics: printing them costs the guest CPU that TCG makes scarce.
    const p = await g.spawn(
      `exec deno run -A main.ts fwd ${a.pciAddress} ${b.pciAddress} --mode io --json ` +
        `--stats-period 0`,
    );
    await untilForwarding(a, b);
    return async () => {
      await g.exec("killall -INT deno");
      const end = await p.wait(60);
      const last = end.output.split("\n").filter((l) => l.startsWith('{"ports":')).pop();
      console.error(`vpmd: ${last ?? end.output}`);
    };
  },
};

const testpmd: Forwarder = {
  name: "testpmd",
  async start(g, a, b) {
    const p = await g.spawn(
      `exec timeout -s INT 600 dpdk-testpmd -l 0,1 -m 128 --file-prefix bench ` +
        `-a ${a.pciAddress} -a ${b.pciAddress} -- --forward-mode=io --total-num-mbufs=4096 ` +
        `--auto-start --stats-period 3600 --nb-cores=1`,
    );
    await p.waitForOutput(/io packet forwarding/, 120);
    return async () => {
      await g.exec("killall -INT dpdk-testpmd");
      await p.wait(60);
    };
  },
};

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return 0;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rates: { type: "string", default: "5000,10000,20000,40000" },
      seconds: { type: "string", default: "3" },
      rounds: { type: "string", default: "2" },
      size: { type: "string", default: "64" },
    },
  });
  const rates = values.rates.split(",").map(Number);
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  const size = Number(values.size);
  const results = new Map<string, Map<number, ForwardingResult[]>>();
  const g = await Guest.boot({ timeoutSec: 1800 });
  try {
    await g.ready();
    const [legacy, modern] = g.nics;
    const bind = await g.exec(
      `deno run -A main.ts bind --force ${legacy.pciAddress} ${modern.pciAddress}`,
      120,
    );
    if (bind.code !== 0) throw new Error(`bind failed: ${bind.output}`);
    for (let round = 0; round < rounds; round++) {
      for (const fwd of round % 2 === 0 ? [vpmd, testpmd] : [testpmd, vpmd]) {
        const stop = await fwd.start(g, legacy, modern);
        try {
          await generate(legacy.wire, { count: 500, rate: 2000, stream: 9 }); // warm-up
          await new Promise((r) => setTimeout(r, 500));
          for (const rate of rates) {
            const r = await measureForwarding(legacy.wire, modern.wire, {
              rate,
              seconds,
              size,
              stream: 1,
              drainMs: 500,
            });
            const byRate = results.get(fwd.name) ?? new Map();
            results.set(fwd.name, byRate);
            byRate.set(rate, [...(byRate.get(rate) ?? []), r]);
            console.error(
              `round ${round} ${fwd.name} offered ${rate} pps: received ${r.pps.toFixed(0)} pps, ` +
                `loss ${r.lossPct.toFixed(2)} %, bad ${r.bad}`,
            );
          }
        } finally {
          await stop();
        }
      }
    }
  } finally {
    await g.close();
  }
  console.log(
    `io forwarding legacy -> modern in the guest (TCG), ${size} B frames, ${seconds} s per rate`,
  );
  console.log("forwarder  offered pps  received pps (median)  loss % (median)");
  for (const [name, byRate] of results) {
    for (const [rate, rs] of byRate) {
      console.log(
        `${name.padEnd(9)}  ${String(rate).padStart(11)}  ${
          median(rs.map((r) => r.pps)).toFixed(0).padStart(21)
        }  ${median(rs.map((r) => r.lossPct)).toFixed(2).padStart(15)}`,
      );
    }
  }
  for (const [name, byRate] of results) {
    let best = 0;
    for (const [, rs] of byRate) {
      if (median(rs.map((r) => r.lossPct)) <= LOSS_OK_PCT) {
        best = Math.max(best, median(rs.map((r) => r.pps)));
      }
    }
    const peak = Math.max(...[...byRate.values()].map((rs) => median(rs.map((r) => r.pps))));
    console.log(
      `${name}: best rate with <= ${LOSS_OK_PCT} % loss ${best.toFixed(0)} pps; peak ${
        peak.toFixed(0)
      } pps`,
    );
  }
}

if (import.meta.main) await main();
