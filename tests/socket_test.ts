/** AF_UNIX sockets (ffi/socket.ts): what a listener may replace at its path, and no hang on connect. */
import assert from "assert";
import { UnixListener, UnixSocket } from "../ffi/socket.ts";

/** Runs `fn` with a path named `name` in a fresh directory, removed afterwards. */
function inTempDir(name: string, fn: (path: string) => void): void {
  const dir = Deno.makeTempDirSync({ prefix: "vpmd-sock-" });
  try {
    fn(`${dir}/${name}`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("unix listener: a path that is not a socket is refused and left as it is", () => {
  inTempDir("important.txt", (path) => {
    Deno.writeTextFileSync(path, "keep me");
    assert.throws(() => new UnixListener(path), /exists and is not a socket: remove it or choose/);
    assert.equal(Deno.readTextFileSync(path), "keep me");
  });
});

Deno.test("unix listener: a live listener's path is refused, a stale socket file replaced", () => {
  inTempDir("sock", (path) => {
    const first = new UnixListener(path);
    try {
      assert.throws(
        () => new UnixListener(path),
        /another process listens on .*: stop it or choose/,
      );
      // The first listener still works.
      const c = UnixSocket.tryConnect(path);
      assert.ok(c !== null);
      const a = first.accept(1000);
      assert.ok(a !== null);
      a.close();
      c.close();
    } finally {
      first.close();
    }
    assert.throws(() => Deno.statSync(path), Deno.errors.NotFound); // close removed its file

    // A socket file whose listener is gone (closed without removing it) is stale: replaced.
    const stale = new UnixListener(path);
    const ino = Deno.lstatSync(path).ino;
    Deno.renameSync(path, `${path}.moved`);
    stale.close(); // its file is elsewhere now: nothing at path to remove
    Deno.renameSync(`${path}.moved`, path);
    assert.equal(Deno.lstatSync(path).ino, ino);
    const second = new UnixListener(path);
    try {
      const c = UnixSocket.tryConnect(path);
      assert.ok(c !== null);
      const a = second.accept(1000);
      assert.ok(a !== null, "the new listener owns the path");
      a.close();
      c.close();
    } finally {
      second.close();
    }
  });
});

Deno.test("unix listener: close leaves alone a socket file that is not its own any more", () => {
  inTempDir("sock", (path) => {
    const old = new UnixListener(path);
    Deno.removeSync(path); // someone removed it, and a new listener took the path
    const now = new UnixListener(path);
    try {
      old.close();
      assert.ok(Deno.lstatSync(path).isSocket); // still there for `now`
      const c = UnixSocket.tryConnect(path);
      assert.ok(c !== null);
      c.close();
    } finally {
      now.close();
    }
  });
});

Deno.test("unix socket: a listener that accepts nothing makes connect wait no longer", () => {
  inTempDir("deaf", (path) => {
    const deaf = new UnixListener(path, 1); // never accepts: its backlog fills
    const conns: UnixSocket[] = [];
    try {
      const t0 = performance.now();
      let refused = 0;
      for (let i = 0; i < 6; i++) {
        const s = UnixSocket.tryConnect(path);
        if (s === null) refused++;
        else conns.push(s);
      }
      assert.ok(refused > 0, "the full backlog answers 'try again'");
      assert.ok(performance.now() - t0 < 2000, "no attempt blocks");
      assert.throws(() => UnixSocket.connect(path, 300), /nobody is listening there/);
    } finally {
      for (const c of conns) c.close();
      deaf.close();
    }
  });
});

Deno.test("unix socket: a path in a directory that does not exist is an error at once", () => {
  inTempDir("gone", (dir) => {
    const path = `${dir}/x.sock`;
    const t0 = performance.now();
    assert.throws(
      () => UnixSocket.connect(path, 10_000),
      new RegExp(
        `^Error: cannot connect to unix socket ${path}: the directory ${dir} does not exist$`,
      ),
    );
    assert.ok(performance.now() - t0 < 2000, "no wait for the 10 s timeout");
    assert.throws(
      () => new UnixListener(path),
      new RegExp(`^Error: cannot listen on ${path}: the directory ${dir} does not exist$`),
    );
    // Relative paths name their directory as given.
    assert.throws(
      () => UnixSocket.connect("no-such-dir-vpmd/x.sock", 10_000),
      /directory no-such-dir-vpmd does not exist/,
    );
  });
});
