// DPoP proofs (RFC 9449) made by a real client library, the npm `dpop`
// package (panva/dpop), for tests/test_dpop.py.
//
//   echo '[{"jwk": {...private JWK...}, "htm": "GET", "htu": "http://h/p", "token": "..."}]' | node dpop_proofs.mjs
//
// Prints a JSON array of proofs, one per request, in order. The private JWK
// is the test's (made in Python); `alg` comes from the key as the library
// chooses it: ES256 for P-256, RS256 for RSA (PS256 when "pss": true), and
// Ed25519 (RFC 9864's name for EdDSA with Ed25519) for OKP keys.

import { generateProof } from 'dpop';

const input = JSON.parse(await new Promise((resolve) => {
  let text = '';
  process.stdin.on('data', (chunk) => { text += chunk; });
  process.stdin.on('end', () => resolve(text));
}));

const algorithm = (jwk, pss) => {
  if (jwk.kty === 'EC') return { name: 'ECDSA', namedCurve: jwk.crv };
  if (jwk.kty === 'RSA') return { name: pss ? 'RSA-PSS' : 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  if (jwk.kty === 'OKP') return { name: 'Ed25519' };
  throw new Error(`unsupported kty ${jwk.kty}`);
};

const out = [];
for (const req of input) {
  const { d, p, q, dp, dq, qi, ...pub } = req.jwk;
  const alg = algorithm(req.jwk, req.pss);
  const priv = { ...req.jwk };
  delete priv.alg;
  delete pub.alg;
  delete priv.key_ops;
  delete pub.key_ops;
  delete priv.use;
  delete pub.use;
  const privateKey = await crypto.subtle.importKey('jwk', priv, alg, false, ['sign']);
  const publicKey = await crypto.subtle.importKey('jwk', pub, alg, true, ['verify']);
  out.push(await generateProof({ privateKey, publicKey }, req.htu, req.htm, req.nonce, req.token, req.additional));
}
console.log(JSON.stringify(out));
