// E2B's JavaScript SDK, unchanged, against box serve's E2B-compatible API:
// node client.mjs URL API_KEY TEMPLATE -> one JSON line of what it saw.
import { CommandExitError, Sandbox } from "e2b";

const [url, apiKey, template] = process.argv.slice(2);
const opts = { apiUrl: url, sandboxUrl: url, apiKey };
const sbx = await Sandbox.create(template, { ...opts, timeoutMs: 300_000, metadata: { from: "js" } });
const seen = {};
const ok = await sbx.commands.run("echo out; echo err >&2");
seen.ok = { exitCode: ok.exitCode, stdout: ok.stdout, stderr: ok.stderr };
try {
  await sbx.commands.run("echo partial; exit 5");
  seen.failed = "no error";
} catch (e) {
  seen.failed = e instanceof CommandExitError ? { exitCode: e.exitCode, stdout: e.stdout } : String(e);
}
const bg = await sbx.commands.run("sleep 600", { background: true });
seen.listed = (await sbx.commands.list()).some((p) => p.pid === bg.pid);
seen.killed = await bg.kill();
const fed = await sbx.commands.run("cat", { background: true, stdin: true });
await sbx.commands.sendStdin(fed.pid, "via stdin\n");
await sbx.commands.closeStdin(fed.pid);
seen.stdin = (await fed.wait()).stdout;
await sbx.files.write("/tmp/js/a.txt", "from js\n");
seen.read = await sbx.files.read("/tmp/js/a.txt");
seen.madeDir = await sbx.files.makeDir("/tmp/js/sub");
await sbx.files.rename("/tmp/js/a.txt", "/tmp/js/sub/b.txt");
seen.list = (await sbx.files.list("/tmp/js", { depth: 2 })).map((e) => `${e.type}:${e.path}`).sort();
await sbx.files.remove("/tmp/js/sub");
seen.existsAfterRemove = await sbx.files.exists("/tmp/js/sub/b.txt");
seen.host = sbx.getHost(8000);
seen.inList = (await Sandbox.list(opts).nextItems()).some((s) => s.sandboxId === sbx.sandboxId);
seen.id = sbx.sandboxId;
await sbx.kill();
seen.runningAfterKill = await sbx.isRunning();
console.log(JSON.stringify(seen));
