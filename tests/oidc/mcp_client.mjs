// An MCP client built with the official MCP TypeScript SDK (@modelcontextprotocol/sdk, pinned in
// package-lock.json): `Client` + `StreamableHTTPClientTransport` with the SDK's own
// client-credentials auth provider (`ClientCredentialsProvider`), for tests/test_mcp.py.
//
//   node tests/oidc/mcp_client.mjs --url http://127.0.0.1:PORT/mcp --issuer http://127.0.0.1:OP \
//        --client-id mcp-reader --client-secret mcp-reader-secret --scope read \
//        --call read_notes --call admin_reset
//
// The client is given the MCP server's URL, its own credentials and the issuer its credentials
// belong to (`expectedIssuer`: the SDK sends the secret to no other authorization server), and
// nothing else: where the authorization server is, what the resource is called and which scopes
// exist, it discovers from the server's 401 (RFC 9728 `resource_metadata`).
//
// It connects (initialize), lists the tools, then calls each --call tool in order, and prints
//   FETCH {"n":1,"method":"POST","url":"...","status":401,...}   one line per HTTP request the SDK made
//   STEP {"step":"call","tool":"read_notes","ok":true,...}         one line per MCP operation
//   RESULT {...}                                                   the summary, last
// Secrets and tokens are never printed: a token request shows its form fields without
// credentials, a token response the granted scope and the JWT's `aud`, an MCP request whether it
// carried a bearer token.

import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    issuer: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    scope: { type: 'string' },
    call: { type: 'string', multiple: true, default: [] },
    'timeout-ms': { type: 'string', default: '15000' },
  },
});
for (const need of ['url', 'issuer', 'client-id', 'client-secret']) {
  if (!args[need]) {
    console.error(`missing --${need}`);
    process.exit(2);
  }
}
const timeout = Number(args['timeout-ms']);

const out = (kind, obj) => console.log(`${kind} ${JSON.stringify(obj)}`);

const jwtClaims = (token) => {
  try {
    return JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
};

// What a request carried, without secrets.
const describeRequest = (init) => {
  const headers = new Headers(init?.headers ?? {});
  const seen = {};
  const auth = headers.get('authorization');
  if (auth) seen.authorization = auth.split(' ')[0]; // the scheme only: "Bearer" or "Basic"
  const body = init?.body;
  if (body instanceof URLSearchParams) {
    seen.form = Object.fromEntries([...body].filter(([k]) => !/secret|assertion|code_verifier/.test(k)));
  } else if (typeof body === 'string') {
    try {
      const msg = JSON.parse(body);
      const one = Array.isArray(msg) ? msg[0] : msg;
      seen.jsonrpc = one?.method ?? 'response';
      if (one?.method === 'tools/call') seen.tool = one.params?.name;
    } catch {
      seen.jsonrpc = 'not-json';
    }
  }
  return seen;
};

// What an answer said, without tokens.
const describeResponse = async (url, response) => {
  const seen = { status: response.status };
  const www = response.headers.get('www-authenticate');
  if (www) seen.www_authenticate = www;
  const type = response.headers.get('content-type') ?? '';
  if (!type.includes('json')) return seen;
  try {
    const body = await response.clone().json();
    if (typeof body?.access_token === 'string') {
      const claims = jwtClaims(body.access_token);
      seen.token = { token_type: body.token_type, scope: body.scope, aud: claims?.aud, jwt: claims !== undefined };
    } else if (url.includes('/.well-known/') && response.ok) {
      seen.document = Object.fromEntries(Object.entries(body).filter(([k]) =>
        ['resource', 'authorization_servers', 'scopes_supported', 'bearer_methods_supported', 'issuer',
          'token_endpoint'].includes(k)));
    } else if (body?.error !== undefined && typeof body.error === 'object') {
      seen.jsonrpc_error = body.error;
    }
  } catch {
    // not JSON after all
  }
  return seen;
};

let n = 0;
const loggingFetch = async (input, init) => {
  n += 1;
  const mine = n;
  const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
  const method = init?.method ?? (typeof input === 'object' && 'method' in input ? input.method : 'GET');
  const entry = { n: mine, method, url, ...describeRequest(init) };
  try {
    const response = await fetch(input, init);
    out('FETCH', { ...entry, ...(await describeResponse(url, response)) });
    return response;
  } catch (err) {
    out('FETCH', { ...entry, failed: String(err?.message ?? err) });
    throw err;
  }
};

const provider = new ClientCredentialsProvider({
  clientId: args['client-id'],
  clientSecret: args['client-secret'],
  scope: args.scope,
  expectedIssuer: args.issuer,
});
const transport = new StreamableHTTPClientTransport(new URL(args.url), { authProvider: provider, fetch: loggingFetch });
const client = new Client({ name: 'oauth-pep-test-client', version: '1.0.0' });
const result = { connected: false, tools: null, calls: [] };
const errors = [];
transport.onerror = (err) => errors.push(String(err?.message ?? err));

const bounded = (promise, what) => Promise.race([
  promise,
  new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: no answer in ${timeout} ms`)), timeout)),
]);

const message = (err) => String(err?.message ?? err);

try {
  await bounded(client.connect(transport), 'connect');
  result.connected = true;
  out('STEP', { step: 'connect', ok: true });
  const listed = await bounded(client.listTools(), 'tools/list');
  result.tools = listed.tools.map((t) => t.name);
  out('STEP', { step: 'list', ok: true, tools: result.tools });
  for (const tool of args.call) {
    try {
      const answer = await bounded(client.callTool({ name: tool, arguments: {} }), `tools/call ${tool}`);
      const text = (answer.content ?? []).map((c) => c.text ?? '').join('\n');
      result.calls.push({ tool, ok: !answer.isError, text });
      out('STEP', { step: 'call', tool, ok: !answer.isError, text });
    } catch (err) {
      result.calls.push({ tool, ok: false, error: message(err), code: err?.code });
      out('STEP', { step: 'call', tool, ok: false, error: message(err), code: err?.code });
    }
  }
} catch (err) {
  result.error = message(err);
  out('STEP', { step: result.connected ? 'list' : 'connect', ok: false, error: result.error });
}
result.transport_errors = errors;
try {
  await bounded(client.close(), 'close');
} catch {
  // closing a stateless transport has nothing to tear down
}
out('RESULT', result);
process.exit(0);
