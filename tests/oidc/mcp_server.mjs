// An MCP server built with the official MCP TypeScript SDK (@modelcontextprotocol/sdk, pinned in
// package-lock.json): the upstream behind Envoy in tests/test_mcp.py.
//
//   node tests/oidc/mcp_server.mjs PORT
//
// Listens on 127.0.0.1:PORT, serves the Streamable HTTP transport on /mcp (stateless: a new
// McpServer and transport per request, JSON answers rather than SSE streams, no session id) and
// prints `READY port=PORT` once it accepts connections. It does no authorization of its own: the
// gateway in front of it does.
//
// Tools:
//   read_notes    returns the notes
//   admin_reset   clears the notes (what a `read` token must never reach)
//
// Every HTTP request is logged on stdout as
//   CALL http=POST path=/mcp jsonrpc=tools/call tool=read_notes authorization=yes
// (never the token) and every tool that ran as
//   TOOL name=read_notes
// so a test can tell which requests reached it and which tools ran. GET /stats (not under /mcp,
// for the test only, straight to this port) answers {"tools": {"read_notes": 1, ...}, "http": N}.

import { createServer } from 'node:http';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const port = Number(process.argv[2] ?? process.env.MCP_PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node mcp_server.mjs PORT');
  process.exit(2);
}

const MAX_BODY = 64 * 1024;
const notes = ['first note', 'second note'];
const stats = { http: 0, tools: {} };

const ran = (name) => {
  stats.tools[name] = (stats.tools[name] ?? 0) + 1;
  console.log(`TOOL name=${name}`);
};

const mcpServer = () => {
  const server = new McpServer({ name: 'oauth-pep-test-notes', version: '1.0.0' });
  server.registerTool('read_notes', { description: 'Read the notes' }, async () => {
    ran('read_notes');
    return { content: [{ type: 'text', text: notes.join('\n') }] };
  });
  server.registerTool('admin_reset', { description: 'Delete every note (admin)' }, async () => {
    ran('admin_reset');
    notes.length = 0;
    return { content: [{ type: 'text', text: 'notes cleared' }] };
  });
  return server;
};

// One JSON-RPC message (or batch) as read by this server, for the log line only.
const describe = (body) => {
  const first = Array.isArray(body) ? body[0] : body;
  const method = typeof first?.method === 'string' ? first.method : '-';
  const tool = method === 'tools/call' && typeof first?.params?.name === 'string' ? first.params.name : '-';
  return `jsonrpc=${Array.isArray(body) ? 'batch:' : ''}${method} tool=${tool}`;
};

const readBody = (req) => new Promise((resolve, reject) => {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      reject(new Error('body too large'));
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  req.on('error', reject);
});

const jsonReply = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const http = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path === '/stats' && req.method === 'GET') {
    jsonReply(res, 200, stats);
    return;
  }
  stats.http += 1;
  let body;
  let parsed;
  try {
    body = req.method === 'POST' ? await readBody(req) : undefined;
    parsed = body === undefined ? undefined : JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  console.log(`CALL http=${req.method} path=${path} ${body === undefined ? 'jsonrpc=- tool=-' : describe(parsed)} `
    + `authorization=${req.headers.authorization ? 'yes' : 'no'}`);
  if (path !== '/mcp') {
    jsonReply(res, 404, { error: 'not found' });
    return;
  }
  if (req.method === 'POST' && parsed === undefined) {
    jsonReply(res, 400, { jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null });
    return;
  }
  try {
    const server = mcpServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
    res.on('close', () => {
      transport.close();
      server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, parsed);
  } catch (err) {
    console.error('mcp error', err);
    if (!res.headersSent) jsonReply(res, 500, { jsonrpc: '2.0', error: { code: -32603, message: 'Internal error' }, id: null });
  }
});

http.listen(port, '127.0.0.1', () => console.log(`READY port=${port}`));
http.on('error', (err) => {
  console.error(`listen failed: ${err.message}`);
  process.exit(1);
});

const stop = () => {
  http.close(() => process.exit(0));
  http.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
