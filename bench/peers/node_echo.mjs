// Echo (or broadcast) server on Node's `ws`, for bench/run.sh.
//
//   node bench/peers/node_echo.mjs ADDR [--deflate] [--broadcast]
//
// --deflate: perMessageDeflate on with ws's defaults, left as shipped (messages under
// 1 KiB go uncompressed; the benchmark's are 1 KiB); off otherwise. --broadcast: every message goes to every
// connected client. ws is installed under bench/peers/node/ (bench/run.sh does it).
import { createRequire } from "node:module";

const require = createRequire(new URL("./node/package.json", import.meta.url));
const { WebSocketServer, WebSocket } = require("ws");

const args = process.argv.slice(2);
const flags = new Set(args.filter((a) => a.startsWith("--")));
for (const f of flags) {
  if (f !== "--deflate" && f !== "--broadcast") {
    console.error(`unknown option ${f}`);
    process.exit(2);
  }
}
const addr = args.find((a) => !a.startsWith("--")) ?? "127.0.0.1:9001";
const i = addr.lastIndexOf(":");
const host = addr.slice(0, i);
const port = Number(addr.slice(i + 1));
const broadcast = flags.has("--broadcast");

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: flags.has("--deflate"),
  maxPayload: 64 * 1024 * 1024,
  clientTracking: broadcast,
});

wss.on("connection", (ws) => {
  if (broadcast) {
    ws.on("message", (data, isBinary) => {
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
    });
  } else {
    ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
});
wss.on("listening", () => console.error(`listening on ${addr} (ws)`));
