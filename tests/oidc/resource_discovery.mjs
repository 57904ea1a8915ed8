// What a strict OAuth client library makes of the gateway as a protected
// resource (RFC 9728), for tests/test_resources.py: oauth4webapi reads the
// challenge of a request with a refused token (protectedResourceRequest
// throws WWWAuthenticateChallengeError with the parsed challenges), then fetches and checks the metadata (resourceDiscoveryRequest +
// processResourceDiscoveryResponse, which compares `resource` with the
// identifier it asked for).
//
// stdin: {"base": "http://127.0.0.1:PORT", "cases": [{"resource": "https://api.example/mcp", "path": "/mcp"}]}
// The identifiers' origin is not where the gateway listens: a custom fetch
// sends each request to `base` instead, keeping the path.
// stdout: one result per case: {"challenge": {...} | null, "metadata_url", "metadata": {...}} or {"error": "..."}
import * as oauth from 'oauth4webapi'

const input = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (chunk) => { text += chunk })
  process.stdin.on('end', () => resolve(text))
}))

const base = new URL(input.base)
const requested = []
const toGateway = (url, options) => {
  const target = new URL(url)
  requested.push(target.href)
  target.protocol = base.protocol
  target.host = base.host
  return fetch(target.href, options)
}

const results = []
for (const c of input.cases) {
  try {
    // A request with a token the gateway refuses: the library parses the
    // challenge (strictly: quoted-string auth-params) into the error it throws.
    let challenges = []
    let status = null
    try {
      const url = new URL(c.path, c.resource)
      await oauth.protectedResourceRequest('not-a-valid-token', 'GET', url, new Headers(), null, { [oauth.customFetch]: toGateway })
    } catch (e) {
      if (!(e instanceof oauth.WWWAuthenticateChallengeError)) throw e
      challenges = e.cause
      status = e.status
    }
    const bearer = challenges.find((ch) => ch.scheme === 'bearer') || null
    const resource = new URL(c.resource)
    requested.length = 0
    const response = await oauth.resourceDiscoveryRequest(resource, { [oauth.customFetch]: toGateway })
    const metadata = await oauth.processResourceDiscoveryResponse(resource, response)
    results.push({
      status,
      challenge: bearer && bearer.parameters,
      metadata_url: requested[0],
      metadata,
    })
  } catch (e) {
    results.push({ error: `${e.name}: ${e.message}`, code: e.code || null })
  }
}
process.stdout.write(JSON.stringify(results))
