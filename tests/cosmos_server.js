// Starts @vercel/cosmosdb-server for the test suite; tests/cosmos_server.py runs it.
//
//   node cosmos_server.js <node_modules dir> <cert.pem> <key.pem>
//
// Listens on 127.0.0.1 on a port the OS picks, serves TLS with the given certificate (the one
// the package ships expired in 2021 and names no IP, so clients could only skip verification),
// prints {"port": N} on stdout once listening, and exits when its stdin closes (its parent died).
//
// Two test-only changes, both listed in docs/COSMOS.md:
// - POST /_test/throttle {"count": n}: the next n document requests answer 429 with
//   x-ms-retry-after-ms: 1, like an account over its RU/s, so throttle accounting is testable;
// - reading a missing document answers 404 as Cosmos DB does (1.0.1 crashes on it and answers 500).
"use strict";

const fs = require("fs");
const path = require("path");

const [modulesDir, certPath, keyPath] = process.argv.slice(2);
const packageDir = path.join(modulesDir, "@vercel", "cosmosdb-server");

// Patch the read handler before the router captures it (require caches by file name).
const readDocument = require(path.join(packageDir, "lib", "handler", "read-document.js"));
const readDocumentAsIs = readDocument.default;
readDocument.default = (account, req, res, params) => {
  try {
    return readDocumentAsIs(account, req, res, params);
  } catch (err) {
    // 1.0.1 dereferences the document before checking that it exists.
    if (err instanceof TypeError && /reading '/.test(err.message)) {
      res.statusCode = 404;
      return { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
    }
    throw err;
  }
};

const { createHttpsServer } = require(packageDir);

let throttleNext = 0;

const server = createHttpsServer({
  cert: fs.readFileSync(certPath),
  key: fs.readFileSync(keyPath),
  keepAlive: true,
});
const [serveCosmos] = server.listeners("request");
server.removeAllListeners("request");
server.on("request", (req, res) => {
  if (req.method === "POST" && req.url === "/_test/throttle") {
    let text = "";
    req.on("data", chunk => { text += chunk; });
    req.on("end", () => {
      throttleNext = JSON.parse(text || "{}").count || 0;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ throttleNext }));
    });
    return;
  }
  if (throttleNext > 0 && /\/docs(\/|$)/.test(req.url)) {
    throttleNext -= 1;
    req.resume();
    res.statusCode = 429;
    res.setHeader("content-type", "application/json");
    res.setHeader("x-ms-retry-after-ms", "1");
    res.setHeader("x-ms-request-charge", "0");
    res.setHeader("x-ms-activity-id", "00000000-0000-0000-0000-000000000429");
    res.end(JSON.stringify({ code: "TooManyRequests", message: "Request rate is large (injected by the test server)" }));
    return;
  }
  serveCosmos(req, res);
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
