/** Port specs: parsing (valid and malformed) and opening transports with clear errors. */
import assert from "assert";
import { formatPortSpec, openTransport, parsePortSpec } from "../mod/portspec.ts";

Deno.test("portspec: sim names with options", () => {
  assert.deepEqual(parsePortSpec("sim:p0"), { kind: "sim", target: "p0", options: {} });
  assert.deepEqual(parsePortSpec("sim:a-1.b_2,gen=off,rate=1000,size=64+1400,mrg=0"), {
    kind: "sim",
    target: "a-1.b_2",
    options: { gen: "off", rate: "1000", size: "64+1400", mrg: "0" },
  });
  assert.deepEqual(parsePortSpec("sim:p,mac=02:00:00:00:00:01").options, {
    mac: "02:00:00:00:00:01",
  });
});

Deno.test("portspec: vhost-user paths, bare flags", () => {
  assert.deepEqual(parsePortSpec("vhost-user:/tmp/vh.sock,server,queues=2"), {
    kind: "vhost-user",
    target: "/tmp/vh.sock",
    options: { server: "", queues: "2" },
  });
  assert.equal(parsePortSpec("vhost-user:rel/path.sock").target, "rel/path.sock");
});

Deno.test("portspec: PCI addresses, with and without domain, normalized", () => {
  assert.deepEqual(parsePortSpec("0000:00:04.0"), {
    kind: "pci",
    target: "0000:00:04.0",
    options: {},
  });
  assert.equal(parsePortSpec("00:1F.7").target, "0000:00:1f.7");
  assert.deepEqual(parsePortSpec("0001:AB:1f.3,portio=sysfs,mode=legacy"), {
    kind: "pci",
    target: "0001:ab:1f.3",
    options: { portio: "sysfs", mode: "legacy" },
  });
});

Deno.test("portspec: format is the canonical spec", () => {
  assert.equal(formatPortSpec(parsePortSpec("sim:p0,gen=off")), "sim:p0,gen=off");
  assert.equal(formatPortSpec(parsePortSpec("vhost-user:/s,server")), "vhost-user:/s,server");
  assert.equal(formatPortSpec(parsePortSpec("00:04.0")), "0000:00:04.0");
});

Deno.test("portspec: malformed specs are one-line errors naming the spec", () => {
  const bad: [string, RegExp][] = [
    ["", /expected sim:NAME, vhost-user:PATH or a PCI address/],
    ["p0", /bad port 'p0': expected sim:NAME/],
    ["sim:", /needs a name/],
    ["sim:a b", /needs a name/],
    ["sim:a/b", /needs a name/],
    ["vhost-user:", /needs a socket path/],
    ["vhost-user:,server", /needs a socket path/],
    ["tap:eth0", /expected sim:NAME/],
    ["0000:00:04", /expected sim:NAME/],
    ["0000:00:20.0", /expected sim:NAME/], // device numbers stop at 1f
    ["00:04.8", /expected sim:NAME/], // functions stop at 7
    ["sim:p0,", /option '' is not key=value/],
    ["sim:p0,=1", /option '=1' is not key=value/],
    ["sim:p0,Rate=1", /option 'Rate=1' is not key=value/],
    ["sim:p0,rate=1,rate=2", /option 'rate' given twice/],
  ];
  for (const [spec, re] of bad) {
    assert.throws(() => parsePortSpec(spec), (e: Error) => {
      assert.match(e.message, re, `spec '${spec}'`);
      assert.ok(!e.message.includes("\n"), `one line for '${spec}'`);
      return true;
    });
  }
});

Deno.test("portspec: openTransport dispatches and reports bad options clearly", () => {
  const t = openTransport("sim:ok,gen=off");
  try {
    assert.equal(t.name, "sim:ok");
    assert.ok(t.dmaKinds.length > 0);
  } finally {
    t.close();
  }
  assert.throws(() => openTransport("sim:p0,colour=blue"), /colour/);
  assert.throws(() => openTransport("vhost-user:/nonexistent/vpmd.sock,colour=blue"), /colour/);
  assert.throws(() => openTransport("0000:00:04.0,colour=blue"), /colour/);
  assert.throws(() => openTransport("0000:7f:1f.7"), /0000:7f:1f\.7/);
  // Every queue of a sim has its qsize, the control queue too: below 4 entries it needs ctrl=0.
  assert.throws(
    () => openTransport("sim:s,qsize=2"),
    /^Error: sim:s: qsize=2: the control queue needs 4 entries; use ctrl=0 or qsize >= 4$/,
  );
  openTransport("sim:s,qsize=2,ctrl=0").close();
});
