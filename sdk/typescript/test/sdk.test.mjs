// The SDK end to end: a real `box serve` (started by tests/sdk/test_typescript.py,
// which passes its address, token and a Boxfile in the environment) and real VMs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ApiError, Host } from "../dist/index.js";

const url = process.env.A3S_BOX_API_URL;
const token = process.env.A3S_BOX_API_TOKEN;
const boxfile = readFileSync(process.env.A3S_BOX_TEST_BOXFILE, "utf8");
const host = new Host({ url, token });

test("without the token nothing is served and nothing changes", async () => {
  const anon = new Host({ url });
  await assert.rejects(anon.boxes(), (e) => e instanceof ApiError && e.status === 401);
  await assert.rejects(anon.apply(boxfile), (e) => e instanceof ApiError && e.status === 401);
  const wrong = new Host({ url, token: "not-the-token" });
  await assert.rejects(wrong.boxes(), (e) => e instanceof ApiError && e.status === 401);
  assert.equal((await host.boxes()).filter((b) => b.project === "sdk").length, 0);
});

test("a pull that cannot reach its registry ends in a problem", async () => {
  const seen = [];
  await assert.rejects(host.pull("127.0.0.1:9/none/such:1", (ev) => seen.push(ev.event)), (e) => {
    assert.ok(e instanceof ApiError);
    assert.match(e.message, /127\.0\.0\.1:9/);
    return true;
  });
  assert.deepEqual(seen, ["pulling", "error"]);
});

test("a bad Boxfile is refused with located problems", async () => {
  await assert.rejects(host.validate("apiVersion: box.a3s.dev/v1\nboxes:\n  Bad_Name: {}\n"), (e) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 422);
    assert.match(e.problem.problems[0], /^Boxfile\.yaml:3:3: boxes\.Bad_Name/);
    return true;
  });
});

test("apply, exec, files, spawn, events, pools", async (t) => {
  const events = [];
  let leasedId = "";
  const stop = new AbortController();
  const watching = (async () => {
    for await (const ev of host.events({ signal: stop.signal })) events.push(ev);
  })();

  const result = await host.apply(boxfile);
  assert.equal(result.ok, true, JSON.stringify(result));
  const box = await host.box("sdk");
  assert.equal(box.info.status, "running");

  await t.test("exec: exit code and separate streams", async () => {
    const r = await box.exec(["sh", "-c", "echo hi; echo oops >&2; exit 3"]);
    assert.deepEqual(r, { exitCode: 3, signal: null, stdout: "hi\n", stderr: "oops\n" });
    const piped = await box.exec(["cat"], { stdin: "fed in" });
    assert.equal(piped.stdout, "fed in");
  });

  await t.test("files round trip", async () => {
    await box.files.write("/tmp/in.txt", "data from node");
    assert.equal((await box.files.read("/tmp/in.txt")).toString(), "data from node");
    const names = (await box.files.list("/tmp")).map((e) => e.name);
    assert.ok(names.includes("in.txt"), names.join(","));
    await box.files.remove("/tmp/in.txt");
    await assert.rejects(box.files.read("/tmp/in.txt"), (e) => e instanceof ApiError);
  });

  await t.test("trees stream in and out as tar", async () => {
    const dir = mkdtempSync(join(tmpdir(), "a3s-sdk-"));
    writeFileSync(join(dir, "a.txt"), "alpha");
    writeFileSync(join(dir, "big.bin"), Buffer.alloc(3 << 20, 7));
    await box.exec(["mkdir", "-p", "/tmp/tree"]);
    await box.files.uploadTar("/tmp/tree", execFileSync("tar", ["-c", "-C", dir, "."], { maxBuffer: 64 << 20 }));
    assert.equal((await box.files.read("/tmp/tree/a.txt")).toString(), "alpha");
    const res = await box.files.downloadTar("/tmp/tree");
    const chunks = [];
    for await (const c of res) chunks.push(c);
    const names = execFileSync("tar", ["-t"], { input: Buffer.concat(chunks), maxBuffer: 64 << 20 }).toString().split("\n");
    assert.ok(names.some((n) => n.endsWith("big.bin")), names.join(","));
    assert.ok(Buffer.concat(chunks).length > 3 << 20);
  });

  await t.test("interactive spawn, with and without a terminal", async () => {
    const sh = await box.spawn(["sh"]);
    let out = "";
    sh.onData((c) => { out += c.toString(); });
    sh.write("echo $((6*7))\n");
    sh.write("exit 5\n");
    sh.end();
    assert.equal((await sh.wait()).exitCode, 5);
    assert.equal(out, "42\n");
    const tty = await box.spawn(["sh"], { tty: true, rows: 30, cols: 100 });
    let screen = "";
    tty.onData((c) => { screen += c.toString(); });
    tty.resize(40, 120);
    tty.write("stty size; echo tty-$((1+1)); exit 7\n");
    assert.equal((await tty.wait()).exitCode, 7);
    assert.match(screen, /40 120/);
    assert.match(screen, /tty-2/);
  });

  await t.test("a client that goes away mid-exec leaves nothing behind", async () => {
    const p = await box.spawn(["sh", "-c", "exec sleep 7777"]);
    await new Promise((r) => setTimeout(r, 1000));
    const seen = await box.exec(["sh", "-c", "ps | grep -c '[s]leep 7777'"]);
    assert.equal(seen.stdout.trim(), "1");
    p.close();
    let left = "1";
    for (let i = 0; i < 50 && left !== "0"; i++) {
      await new Promise((r) => setTimeout(r, 200));
      left = (await box.exec(["sh", "-c", "ps | grep -c '[s]leep 7777'"])).stdout.trim();
    }
    assert.equal(left, "0");
  });

  await t.test("a warm pool: acquire and release", async () => {
    const pools = await host.pools("sdk");
    assert.equal(pools[0]?.name, "warm");
    const leased = await host.acquire("warm", { name: "job-1" });
    assert.equal(leased.name, "job-1");
    leasedId = leased.info.id;
    assert.equal((await leased.exec(["hostname"])).stdout, "worker\n");
    await leased.release();
    await assert.rejects(host.box("job-1"), (e) => e instanceof ApiError && e.status === 404);
  });

  await t.test("acquire waits: a burst past min_ready is served up to max, then 409", async () => {
    const both = await Promise.all([host.acquire("warm", { name: "job-a", timeout: 300 }),
                                    host.acquire("warm", { name: "job-b", timeout: 300 })]);
    assert.deepEqual(both.map((b) => b.name).sort(), ["job-a", "job-b"]);
    await assert.rejects(host.acquire("warm", { timeout: 1 }), (e) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 409);
      assert.match(e.message, /no ready box after waiting 1s \(2 of max 2 leased/);
      return true;
    });
    for (const b of both) await b.release();
  });

  await t.test("errors carry the CLI's message", async () => {
    await assert.rejects(host.box("nosuch"), (e) => {
      assert.ok(e instanceof ApiError);
      assert.equal(e.status, 404);
      assert.equal(e.message, "box nosuch: no such box (see `box ps`)");
      return true;
    });
  });

  await box.stop();
  assert.equal(box.info.status, "stopped");
  await box.start();
  assert.equal(box.info.status, "running");
  await new Promise((r) => setTimeout(r, 1000));
  stop.abort();
  await watching;
  const whats = events.map((e) => `${e.what} ${e.target.replace(/^sdk\./, "")}`);
  for (const want of ["apply sdk", "acquire warm", `release ${leasedId.replace(/^sdk\./, "")}`, "stop sdk", "start sdk"]) {
    assert.ok(whats.includes(want), `${want} not in ${whats.join("; ")}`);
  }
  assert.ok(events.every((e) => e.who.startsWith("token:")));
});
