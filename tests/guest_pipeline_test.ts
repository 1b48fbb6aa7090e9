/**
 * A pipeline on PCI ports, and its checksums read by a real network stack: in the guest lab,
 * vpmd runs examples/snat.ts between the legacy NIC (inside) and the modern NIC (outside); the
 * host relays what leaves the outside NIC into the transitional NIC, which the guest's Linux
 * kernel drives. The kernel verifies every IPv4 header and UDP, TCP and ICMP checksum it receives
 * (/proc/net/snmp counts the bad ones), so translated frames must all be accepted, while frames
 * the host corrupts on purpose (the control) must be counted as checksum errors. The outside
 * capture, written to the shared folder, is read with tcpdump on the host.
 */
import assert from "assert";
import { type Guest, guestTest, parseMac } from "./lib/guest.ts";
import { checkIpv4Checksums, icmp4Echo, tcp4, udp4 } from "./lib/frames.ts";
import { haveCommand } from "./lib/peers.ts";
import { tcpdumpCount, tcpdumpRead } from "./lib/tcpdump.ts";

const VPMD = "deno run -A main.ts";

async function ifaceOf(g: Guest, mac: string): Promise<string> {
  const r = await g.exec(
    `for i in /sys/class/net/*; do [ "$(cat $i/address)" = "${mac}" ] && basename $i; done`,
  );
  const name = r.output.trim();
  assert.match(name, /^eth\d+$/, `no interface with MAC ${mac}: ${r.output}`);
  return name;
}

/** /proc/net/snmp as { "Udp.InCsumErrors": n, ... }. */
async function snmp(g: Guest): Promise<Record<string, number>> {
  const r = await g.exec("cat /proc/net/snmp");
  assert.equal(r.code, 0, r.output);
  const lines = r.output.trim().split("\n");
  const out: Record<string, number> = {};
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const [proto, ...names] = lines[i].split(/\s+/);
    const values = lines[i + 1].split(/\s+/).slice(1).map(Number);
    names.forEach((n, k) => out[`${proto.replace(":", "")}.${n}`] = values[k]);
  }
  return out;
}

const delta = (a: Record<string, number>, b: Record<string, number>, k: string) => b[k] - a[k];

guestTest(
  "pipeline on PCI ports: examples/snat.ts's checksums accepted by the guest kernel; capture read with tcpdump",
  async (g) => {
    const [inside, outside, kernelNic] = g.nics;
    const bind = await g.exec(
      `${VPMD} bind --force ${inside.pciAddress} ${outside.pciAddress}`,
      90,
    );
    assert.equal(bind.code, 0, bind.output);
    const ifc = await ifaceOf(g, kernelNic.mac);
    const up = await g.exec(
      `ip addr add 10.9.0.2/24 dev ${ifc} && ip link set ${ifc} up && sleep 1`,
    );
    assert.equal(up.code, 0, up.output);
    // What leaves the outside NIC goes to the kernel's NIC.
    outside.wire.onFrame = (f) => kernelNic.wire.send(f);
    const p = await g.spawn(
      `exec ${VPMD} fwd ${inside.pciAddress} ${outside.pciAddress} --pipeline examples/snat.ts ` +
        `--pipeline-arg public=10.9.0.1 --pipeline-arg net=192.168.0.0/16 ` +
        `--pcap 1:/lab/snat.pcap:tx --json --stats-period 1`,
    );
    let output = "";
    try {
      await p.waitForOutput(/^\{"t":/m, 120);
      const before = await snmp(g);
      const dst = [...parseMac(kernelNic.mac)];
      const to = [10, 9, 0, 2];
      const n = 100;
      const good: Uint8Array[] = [];
      for (let i = 0; i < n; i++) {
        good.push(
          udp4({
            dst,
            srcIp: [192, 168, 1, 10 + (i % 5)],
            dstIp: to,
            sport: 5000 + i,
            dport: 7777,
          }),
        );
        good.push(
          udp4({
            dst,
            srcIp: [192, 168, 2, 1],
            dstIp: to,
            sport: 6000,
            dport: 7778,
            noUdpChecksum: true,
          }),
        );
        good.push(tcp4({ dst, srcIp: [192, 168, 1, 20], dstIp: to, sport: 40000 + i, dport: 9 }));
        good.push(icmp4Echo({ dst, srcIp: [192, 168, 1, 30], dstIp: to }, i));
      }
      for (const f of good) assert.deepEqual(checkIpv4Checksums(f), []);
      // The control: UDP frames with a payload byte changed after the checksum was computed.
      const bad = Array.from({ length: 20 }, (_, i) => {
        const f = udp4({ dst, srcIp: [192, 168, 1, 40], dstIp: to, sport: 7000 + i, dport: 7779 });
        f[f.length - 1] ^= 0x5a;
        return f;
      });
      const frames = [...good, ...bad];
      for (let i = 0; i < frames.length; i++) {
        inside.wire.send(frames[i]);
        if (i % 20 === 19) await new Promise((r) => setTimeout(r, 10)); // paced: ~2 kframes/s
      }
      let after = before;
      const until = Date.now() + 30_000;
      const seen = () =>
        delta(before, after, "Udp.InDatagrams") + delta(before, after, "Udp.NoPorts") +
        delta(before, after, "Udp.InCsumErrors");
      while (Date.now() < until && seen() < 2 * n + bad.length) {
        await new Promise((r) => setTimeout(r, 500));
        after = await snmp(g);
      }
      const stop = await g.exec("killall -INT deno");
      assert.equal(stop.code, 0, stop.output);
      const end = await p.wait(60);
      output = end.output;
      assert.equal(end.code, 0, output);
      const line = output.split("\n").filter((l) => l.startsWith('{"ports":')).pop() ?? "";
      const s = JSON.parse(line);
      assert.equal(s.pipeline.errors, 0, line);
      const sent = s.ports[1].txPackets;
      assert.ok(sent >= frames.length * 0.99, `vpmd sent ${sent} of ${frames.length}: ${line}`);
      // The kernel: every translated frame accepted; exactly the corrupted ones refused.
      const udpOk = delta(before, after, "Udp.InDatagrams") + delta(before, after, "Udp.NoPorts");
      assert.equal(delta(before, after, "Udp.InCsumErrors"), bad.length, "the control is counted");
      assert.ok(udpOk >= 2 * n * 0.99, `UDP accepted ${udpOk} of ${2 * n}`);
      assert.equal(delta(before, after, "Tcp.InCsumErrors"), 0, "TCP checksum errors");
      assert.ok(delta(before, after, "Tcp.InSegs") >= n * 0.99, "TCP segments accepted");
      assert.equal(delta(before, after, "Icmp.InCsumErrors"), 0, "ICMP checksum errors");
      assert.ok(delta(before, after, "Icmp.InEchos") >= n * 0.99, "ICMP echo requests accepted");
      assert.equal(delta(before, after, "Ip.InHdrErrors"), 0, "IPv4 header errors");
      // The capture on the host: what the outside port sent, translated.
      if (haveCommand("tcpdump")) {
        const file = `${g.runDir}/snat.pcap`;
        assert.equal(await tcpdumpCount(file), sent);
        const head = await tcpdumpRead(file, ["-c", "4"]);
        assert.match(head[0].line, / 10\.9\.0\.1\.20000 > 10\.9\.0\.2\.7777: UDP/);
      }
    } catch (e) {
      throw new Error(`${(e as Error).message}\nforwarder: ${output || await p.output()}`);
    } finally {
      outside.wire.onFrame = null;
    }
  },
);
