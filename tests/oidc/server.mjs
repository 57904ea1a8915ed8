// oidc-provider (panva/node-oidc-provider, OpenID Certified) as the
// authorization server of oauth-pep's introspection interop tests
// (tests/oidc_provider.py, tests/test_oidc_interop.py).
//
//   node tests/oidc/server.mjs PORT        (or OIDC_PORT=PORT node tests/oidc/server.mjs)
//
// Listens on 127.0.0.1:PORT with issuer http://127.0.0.1:PORT and prints
// `READY port=PORT issuer=...` once it accepts connections. State (tokens)
// lives in memory (oidc-provider's MemoryAdapter) and dies with the process.
//
// Endpoints (oidc-provider's defaults; discovery names them):
//   /.well-known/openid-configuration, /jwks, /token,
//   /token/introspection (RFC 7662), /token/revocation (RFC 7009)
//
// Clients:
//   app      / app-secret       client_credentials, scopes "read write", client_secret_basic
//   pep      / pep-secret       introspection only (the filter), client_secret_basic
//   pep-post / pep-post-secret  introspection only, client_secret_post
//   pep-jwt                     introspection only, private_key_jwt (RFC 7523): its JWKS is the
//                               public part of pep-jwt-keys.json (kids pep-jwt-es256, pep-jwt-eddsa;
//                               test keys, committed on purpose)
//
// oidc-provider accepts a client assertion whose `aud` is the endpoint's URL,
// the issuer or the token endpoint's URL, and refuses a `jti` it has seen
// before ("client assertion tokens must only be used once", 401
// invalid_client; lib/shared/token_jwt_auth.js, ReplayDetection): every
// introspection needs a fresh assertion.
//
// oidc-provider itself accepts client_secret_basic and client_secret_post
// interchangeably for a client registered with either; this server is
// strict at introspection and revocation: the method used must be the
// client's registered token_endpoint_auth_method, else 401 invalid_client.
// So a test with `pep-post` fails if the filter sends Basic credentials.
//
// Every introspection and revocation request is logged on stdout as
//   CALL route=introspection client=pep auth=client_secret_basic hint=access_token token=<sha256[:16]> status=200 active=true jti=-
// (never a secret, never the token itself; jti: the client assertion's, for
// private_key_jwt), for tests that count callouts.
//
// With OIDC_DPOP=1 (tests/test_dpop.py) the provider also binds tokens to a
// client's DPoP key (features.dPoP: a token request with a DPoP proof gets
// `token_type: DPoP` and `cnf.jkt`, in the JWT or in the introspection
// answer) and issues JWT access tokens (`typ: at+jwt`, RS256, `aud` the
// resource) for the resource `https://api.test` when a token request names
// it (`resource=`); without `resource` tokens stay opaque.
//
// OIDC_DPOP=1 also enables certificate-bound tokens (RFC 8705,
// features.mTLS.certificateBoundAccessTokens) for the client
// `mtls-app` / `mtls-app-secret`: as no TLS reaches this test server, the
// client certificate is read from the request header `x-test-client-cert`
// (base64 of the PEM), a test-only stand-in for the TLS connection's.
//
// Token exchange (RFC 8693, tests/test_token_exchange.py): the grant
// urn:ietf:params:oauth:grant-type:token-exchange is registered with
// provider.registerGrantType for the client `gw` / `gw-secret`
// (client_secret_basic; also client_credentials, scopes "read write"). Its
// subject_token must be an active access token of this provider (else 400
// invalid_grant), subject_token_type the access token type (else 400
// invalid_request), audience EXCHANGE_AUDIENCE if given (else 400
// invalid_target); an actor_token, if given, an active token too. The
// answer is a new opaque token of `gw` whose introspection carries
// `subject_client_id` (the subject token's client), `exchanged_for` (the
// audience) and `act` ({client_id} of the actor token's client, RFC 8693 §4.1),
// with `issued_token_type` the access token type.
// Every exchange is logged as `CALL route=exchange ... token=<sha256[:16] of
// the subject token>`.
//
// With OIDC_JWT_INTROSPECTION=1 (RFC 9701) introspection answers a request
// that accepts application/token-introspection+jwt with a signed JWT
// (features.jwtIntrospection; RS256 with the provider's key).
//
// With OIDC_MCP_RESOURCE=<url>[,<url>...] (tests/test_mcp.py) the provider also issues JWT
// access tokens (`typ: at+jwt`, RS256, `aud` the resource, `scope` among "read admin") for each
// of those resources when a client_credentials request names it (`resource=`, RFC 8707), to
// the clients
//   mcp-reader / mcp-reader-secret   scope "read"
//   mcp-admin  / mcp-admin-secret    scopes "read admin"
// (client_secret_basic, as the MCP SDK's ClientCredentialsProvider authenticates).
// A token request naming another resource: 400 invalid_target.
//
// Access tokens are opaque: client_credentials tokens are JWTs only when a
// resource indicator selects a resource server with accessTokenFormat "jwt";
// resource indicators are disabled here, so every token is oidc-provider's
// opaque format (43 base64url characters, 256 random bits).
//
// What an active introspection answer holds for a token of `app`
// (oidc-provider 9.13.3, lib/actions/introspection.js):
//   {"active": true, "client_id": "app", "exp": ..., "iat": ..., "iss": "<issuer>",
//    "scope": "read write", "token_type": "Bearer"}
// No `aud` (no resource server), no `sub` (no end-user), no `jti` (an opaque
// token's jti is its value, which oidc-provider does not echo).

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] ?? process.env.OIDC_PORT);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.mjs PORT (or OIDC_PORT=PORT)');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

// Resource servers (the filter) that may introspect tokens issued to other clients.
const INTROSPECTORS = new Set(['pep', 'pep-post', 'pep-jwt']);

// pep-jwt's keys, public part only: what the provider verifies its assertions with.
const PEP_JWT_JWKS = {
  keys: JSON.parse(readFileSync(new URL('./pep-jwt-keys.json', import.meta.url), 'utf8'))
    .keys.map(({ d, ...pub }) => pub),
};

// How the request authenticated the client: Basic header, client assertion, or client_secret in the form.
const usedAuthMethod = (ctx) => {
  if (ctx.headers.authorization !== undefined) return 'client_secret_basic';
  if (ctx.oidc?.params?.client_assertion !== undefined) return 'private_key_jwt';
  if (ctx.oidc?.params?.client_secret !== undefined) return 'client_secret_post';
  return 'none';
};

// The jti of the request's client assertion (not verified: for the log only).
const assertionJti = (ctx) => {
  const assertion = ctx.oidc?.params?.client_assertion;
  if (typeof assertion !== 'string') return '-';
  try {
    const claims = JSON.parse(Buffer.from(assertion.split('.')[1] ?? '', 'base64url').toString('utf8'));
    return typeof claims.jti === 'string' && /^[\x21-\x7e]+$/.test(claims.jti) ? claims.jti : '?';
  } catch {
    return '?';
  }
};

const requireRegisteredAuthMethod = (ctx, client) => {
  if (usedAuthMethod(ctx) !== client.clientAuthMethod) {
    throw new errors.InvalidClientAuth(`registered ${client.clientAuthMethod}, used ${usedAuthMethod(ctx)}`);
  }
};

export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
export const EXCHANGE_AUDIENCE = 'https://backend.test';
const EXCHANGE_CLAIMS = new WeakMap();

const resourceServer = (clientId, secret, method) => ({
  client_id: clientId,
  client_secret: secret,
  token_endpoint_auth_method: method, // also how it authenticates at introspection/revocation
  grant_types: [],
  response_types: [],
  redirect_uris: [],
});

const DPOP = process.env.OIDC_DPOP === '1';
export const API_RESOURCE = 'https://api.test';

const configuration = {
  clients: [
    {
      client_id: 'app',
      client_secret: 'app-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'read write',
    },
    {
      client_id: 'gw',
      client_secret: 'gw-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials', TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      scope: 'read write',
    },
    resourceServer('pep', 'pep-secret', 'client_secret_basic'),
    resourceServer('pep-post', 'pep-post-secret', 'client_secret_post'),
    {
      client_id: 'pep-jwt',
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: PEP_JWT_JWKS,
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  scopes: ['openid', 'offline_access', 'read', 'write', 'admin'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: { enabled: false },
    introspection: {
      enabled: true,
      // The caller must be a registered resource server, or the token's own client.
      allowedPolicy: async (ctx, client, token) => {
        requireRegisteredAuthMethod(ctx, client);
        return INTROSPECTORS.has(client.clientId) || client.clientId === token.clientId;
      },
    },
    revocation: {
      enabled: true,
      // Only the client the token was issued to may revoke it (RFC 7009 §2.1).
      allowedPolicy: async (ctx, client, token) => {
        requireRegisteredAuthMethod(ctx, client);
        return client.clientId === token.clientId;
      },
    },
  },
  ttl: {
    ClientCredentials: () => 600,
  },
  cookies: { keys: ['oauth-pep-interop-tests-only'] },
  // An exchanged token's claims (oidc-provider sets `extra` from this hook when it saves a token).
  extraTokenClaims: async (ctx, token) => EXCHANGE_CLAIMS.get(token),
};
// Resource indicators (RFC 8707) the provider issues JWT access tokens for, with their scopes.
const RESOURCE_SCOPES = new Map();
if (DPOP) {
  configuration.features.dPoP = { enabled: true };
  configuration.enabledJWA = { dPoPSigningAlgValues: ['ES256', 'EdDSA', 'RS256', 'PS256'] };
  configuration.features.mTLS = {
    enabled: true,
    certificateBoundAccessTokens: true,
    getCertificate: (ctx) => {
      const header = ctx.get('x-test-client-cert');
      return header ? Buffer.from(header, 'base64').toString('utf8') : undefined;
    },
  };
  configuration.clients.push({
    client_id: 'mtls-app',
    client_secret: 'mtls-app-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
    tls_client_certificate_bound_access_tokens: true,
  });
  RESOURCE_SCOPES.set(API_RESOURCE, 'read write');
}
// The MCP servers of tests/test_mcp.py (their resource identifiers, as the gateway names them).
for (const resource of (process.env.OIDC_MCP_RESOURCE ?? '').split(',').filter(Boolean)) {
  RESOURCE_SCOPES.set(resource, 'read admin');
}
if (process.env.OIDC_MCP_RESOURCE) {
  const mcpClient = (clientId, scope) => ({
    client_id: clientId,
    client_secret: `${clientId}-secret`,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope,
  });
  configuration.clients.push(mcpClient('mcp-reader', 'read'), mcpClient('mcp-admin', 'read admin'));
}
if (RESOURCE_SCOPES.size > 0) {
  configuration.features.resourceIndicators = {
    enabled: true,
    defaultResource: () => undefined,
    getResourceServerInfo: (ctx, resource) => {
      const scope = RESOURCE_SCOPES.get(resource);
      if (scope === undefined) throw new errors.InvalidTarget();
      return { scope, audience: resource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
    },
  };
}

if (process.env.OIDC_JWT_INTROSPECTION === '1') {
  configuration.features.jwtIntrospection = { enabled: true };
  // oidc-provider signs an introspection answer for a client that registered an alg for it.
  for (const client of configuration.clients) {
    if (INTROSPECTORS.has(client.client_id) && client.token_endpoint_auth_method !== 'private_key_jwt') {
      client.introspection_signed_response_alg = 'RS256';
    }
  }
}

const provider = new Provider(issuer, configuration);

// RFC 8693 token exchange (see the header comment).
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx, next) => {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be the access token type');
  }
  const subject = await provider.ClientCredentials.find(params.subject_token);
  if (!subject || !subject.isValid) throw new errors.InvalidGrant('subject_token is not an active access token');
  if (params.audience !== undefined && params.audience !== EXCHANGE_AUDIENCE) {
    throw new errors.InvalidTarget('unknown audience');
  }
  let actor;
  if (params.actor_token !== undefined) {
    actor = await provider.ClientCredentials.find(params.actor_token);
    if (!actor || !actor.isValid) throw new errors.InvalidGrant('actor_token is not an active access token');
  }
  const token = new provider.ClientCredentials({ client, scope: params.scope || undefined });
  EXCHANGE_CLAIMS.set(token, {
    subject_client_id: subject.clientId,
    exchanged_for: params.audience,
    ...(actor ? { act: { client_id: actor.clientId } } : {}),
  });
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope || undefined,
  };
  await next();
}, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'audience', 'requested_token_type', 'scope']);

const ROUTES = { '/token/introspection': 'introspection', '/token/revocation': 'revocation' };
provider.use(async (ctx, next) => {
  const route = ROUTES[ctx.path];
  try {
    await next();
  } finally {
    const exchange = ctx.path === '/token' && ctx.oidc?.params?.grant_type === TOKEN_EXCHANGE;
    if ((route || exchange) && ctx.method === 'POST') {
      const params = ctx.oidc?.params ?? {};
      const token = exchange && typeof params.subject_token === 'string'
        ? createHash('sha256').update(params.subject_token).digest('hex').slice(0, 16)
        : typeof params.token === 'string'
        ? createHash('sha256').update(params.token).digest('hex').slice(0, 16) : '-';
      const active = route === 'introspection' && ctx.body && typeof ctx.body === 'object' ? ctx.body.active : '-';
      console.log(`CALL route=${route ?? 'exchange'} client=${ctx.oidc?.client?.clientId ?? '-'} auth=${usedAuthMethod(ctx)} `
        + `hint=${params.token_type_hint ?? '-'} token=${token} status=${ctx.status} active=${active ?? '-'} `
        + `jti=${assertionJti(ctx)}`);
    }
  }
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`READY port=${port} issuer=${issuer}`);
});
server.on('error', (err) => {
  console.error(`listen failed: ${err.message}`);
  process.exit(1);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections(); // keep-alive connections (Envoy's, the tests') would hold close() up
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
