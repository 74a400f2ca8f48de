// The official TypeScript MCP client, as an MCP host would use it, against box serve's /mcp:
// node client.mjs URL TOKEN POOL -> one JSON line of what it saw.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, pool] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "a3s-box-test", version: "1.0.0" });
await client.connect(transport);
const tools = (await client.listTools()).tools.map((t) => t.name).sort();
const box = (await client.callTool({ name: "acquire", arguments: { pool, wait_seconds: 120 } })).structuredContent;
const ran = await client.callTool({ name: "run", arguments: { box: box.id, command: ["sh", "-c", "echo ts; exit 4"] } });
await client.callTool({ name: "write_file", arguments: { box: box.id, path: "/tmp/ts.txt", content: "from ts\n" } });
const read = await client.callTool({ name: "read_file", arguments: { box: box.id, path: "/tmp/ts.txt" } });
const denied = await client.callTool({ name: "run", arguments: { box: "private", command: ["true"] } });
await client.callTool({ name: "delete_box", arguments: { box: box.id } });
console.log(JSON.stringify({ tools, box: box.name, ran: ran.structuredContent, read: read.content[0].text,
  denied: { isError: denied.isError, text: denied.content[0].text } }));
await client.close();
