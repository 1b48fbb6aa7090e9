/**
 * vpmd: the command line.
 *
 *   vpmd fwd PORT... [--mode io|mac|macswap|rxonly|txonly] [flags]   forward frames
 *   vpmd devices [--json] | bind [--force] ADDR... | unbind ADDR...   virtio-net PCI functions
 *   vpmd help
 *
 * Exit codes: 0 success (also a clean stop on SIGINT, SIGTERM, SIGHUP or --duration), 1 a failure
 * while running (also a device that fails to start: it refuses a request or a control command, or
 * answers wrongly), 2 bad usage (flag, port spec, missing device, a flag the device has no feature
 * for, a pool too small for the rings): one line on stderr. A second stop signal: devices reset,
 * exit 128 + the signal's number.
 */
import { runForwarder, UsageError } from "./cli/fwd.ts";
import { runPciCommand } from "./cli/pci.ts";

export const USAGE = `vpmd: userspace virtio-net poll-mode driver and packet forwarder

Usage:
  vpmd fwd PORT [PORT...] [flags]      forward frames between ports (pairs 0<->1, 2<->3, ...)
  vpmd devices [--json]                list virtio-net PCI functions
  vpmd bind [--force] ADDR...          give PCI functions to ${"uio_pci_generic"} (for vpmd)
  vpmd unbind ADDR...                  give them back to the kernel's virtio-pci
  vpmd help

Ports:
  sim:NAME[,gen=on|off][,rate=PPS][,size=N[+N...]][,stream=N][,mrg=0|1][,qsize=N][,qfixed=0|1]
          [,mtu=N][,ctrl=0|1][,ctrl_rx=0|1][,ctrl_vlan=0|1][,legacy=0|1][,event_idx=0|1]
          [,in_order=0|1][,packed=0|1][,indirect=0|1][,notify=0|1][,link=up|down][,evil=MODE]
          [,mac=XX:XX:XX:XX:XX:XX][,queues=N][,rss=0|1][,flows=N]
                                       simulated device with a frame generator and checker
  vhost-user:PATH[,server][,queues=N][,mrg=0|1][,in_order=0|1][,packed=0|1][,indirect=0|1]
          [,qsize=N][,mac=..][,timeout=S]
                                       vhost-user front-end (DPDK vhost, OVS-DPDK, VPP)
  DDDD:BB:DD.F[,mode=legacy|modern][,portio=ioperm|sysfs][,irq=uio|poll][,packed=0|1]
          [,indirect=0|1]
                                       virtio-net PCI function bound with 'vpmd bind'

fwd flags:
  --mode M            io (default), mac, macswap, rxonly, txonly
  --burst N           frames per burst (default 32)
  --rxd N, --txd N    RX/TX ring sizes (default 256, or the device's size if smaller;
                      0 = the device's maximum)
  --queues N          queue pairs per port (default 1)
  --rss T[,T...]      receive-side scaling over the queues by hash of ip, udp or tcp
                      headers (VIRTIO_NET_F_RSS)
  --cores C           forward on C worker threads, streams spread as testpmd's
                      --nb-cores (default 1: the main thread forwards); --pcap and
                      --tx-pcap run on one core
  --duration S        stop after S seconds (default: run until Ctrl-C)
  --max-packets N     stop after N frames received by all ports together (txonly: sent;
                      with --cores, checked every millisecond: a few more get through)
  --stats-period S    statistics every S seconds (default 1, at least 0.01; 0 = none)
  --json              JSON lines: one object per period, a summary object as the last line
  --eth-peer N,MAC    destination MAC for port N (mac and txonly; default 02:00:00:00:00:NN)
  --txpkts L[,L...]   txonly frame: segment lengths (several = one multi-segment frame;
                      at most one segment per TX ring entry, at most MTU + 18 bytes)
  --vlan-strip        strip 802.1Q tags on receive (TCI kept in the packet metadata)
  --vlan-insert VID   insert an 802.1Q tag with this VLAN id on transmit
  --mbufs N           buffers in the shared pool (default: enough for every ring;
                      at least every RX and TX ring's entries and a burst; at most
                      1973790, 4 GiB)
  --promisc, --no-promisc  promiscuous mode (default on when the device can filter)
  --allmulti          receive every multicast frame
  --mac [N,]ADDR      set port N's MAC address (default port 0)
  --mcast ADDR,...    multicast addresses to receive (MAC filter table)
  --vlan-filter VID,...  receive tagged frames of these VLANs only (device filter)
  --mtu N             port MTU (default 1500)
  --pipeline FILE.ts  run this TypeScript module on every received burst instead of --mode:
                      frames go where its verdicts say (pair, another port, back, drop);
                      with --cores every worker loads it and calls its init
  --pipeline-arg K=V  an argument for the pipeline's init (repeatable)
  --pcap P:FILE[:rx|tx|both]  capture port P's frames into FILE (pcap, ns timestamps;
                      repeatable; default both directions)
  --pcap-snaplen N, --pcap-count N, --pcap-max-bytes N  bytes kept per frame, frames and
                      bytes per file at most
  --tx-pcap FILE      with --mode txonly: send the frames of a capture (pcap or pcapng)
  --tx-pcap-loop N    send the capture N times, then stop (default 1; 0 = until stopped)

Stopping: SIGINT (Ctrl-C), SIGTERM or SIGHUP drains, resets the devices, prints the
summary and exits 0; a second signal resets the devices and exits 128 + its number.

Examples:
  vpmd fwd sim:p0 sim:p1 --mode io --duration 5
  vpmd fwd sim:p0 sim:p1 --pipeline examples/firewall.ts --pipeline-arg rules=rules.json \\
    --pcap 1:out.pcap:tx
`;

export async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  try {
    switch (cmd) {
      case "fwd":
        return await runForwarder(rest);
      case "devices":
      case "bind":
      case "unbind":
        return await runPciCommand(cmd, rest);
      case "help":
      case "--help":
      case "-h":
        console.log(USAGE);
        return 0;
      case undefined:
        console.error(
          "vpmd: a command is needed (fwd, devices, bind, unbind, help); see 'vpmd help'",
        );
        return 2;
      default:
        console.error(`vpmd: unknown command '${cmd}'; see 'vpmd help'`);
        return 2;
    }
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`vpmd ${cmd}: ${e.message.split("\n")[0]}`);
      return 2;
    }
    console.error(`vpmd ${cmd}: ${String((e as Error).message ?? e).split("\n")[0]}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
