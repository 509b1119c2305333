// The OpenID provider fhir-fence's identity tests run against: the npm package oidc-provider
// (OpenID Certified), unmodified, served over HTTPS on 127.0.0.1 with a certificate of the test
// CA that scripts/idp makes. What it offers: discovery, JWKS, dynamic client registration (a
// client carries the `tenant` its tokens name), client_credentials with JWT access tokens
// (RFC 9068, `typ: at+jwt`) for a resource indicator (opaque ones for a resource whose URL
// contains "opaque"), introspection and revocation.
//
// Test controls, on the same port under /admin/ (loopback only, no authentication: a harness):
//   POST /admin/rotate   a new signing key first in the JWKS; the old keys stay published
//   POST /admin/retire   publish the newest key only
//   POST /admin/reuse-kid  the first key replaced by a new one under the same kid (a provider
//                        that reuses a kid for a new key); the other keys stay published
//   POST /admin/offline  every other request has its connection dropped (the provider is down)
//   POST /admin/online   serve again
import Provider from 'oidc-provider';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

const port = Number(process.env.IDP_PORT || 8095);
const dir = process.env.IDP_DIR;
const issuer = `https://127.0.0.1:${port}`;

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

let keys = [newKey()];
let online = true;

// Storage outlives a rotation (which builds a new Provider): registered clients, tokens.
const storage = new Map();
class SharedAdapter {
  constructor(model) {
    this.model = model;
  }
  key(id) {
    return `${this.model}:${id}`;
  }
  async upsert(id, payload, expiresIn) {
    storage.set(this.key(id), { payload, expires: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
  }
  async find(id) {
    const found = storage.get(this.key(id));
    if (!found || (found.expires && found.expires < Date.now())) return undefined;
    return found.payload;
  }
  async findByUserCode() {
    return undefined;
  }
  async findByUid(uid) {
    for (const [k, v] of storage) if (k.startsWith(`${this.model}:`) && v.payload.uid === uid) return v.payload;
    return undefined;
  }
  async consume(id) {
    const found = storage.get(this.key(id));
    if (found) found.payload.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id) {
    storage.delete(this.key(id));
  }
  async revokeByGrantId(grantId) {
    for (const [k, v] of storage) if (v.payload.grantId === grantId) storage.delete(k);
  }
}

function build() {
  const provider = new Provider(issuer, {
    adapter: SharedAdapter,
    jwks: { keys },
    clients: [],
    extraClientMetadata: {
      properties: ['tenant'],
      validator(ctx, key, value) {
        if (key === 'tenant' && value !== undefined && typeof value !== 'string') {
          throw new Error('tenant must be a string');
        }
      },
    },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => true,
        // A resource whose URL contains "opaque" gets opaque tokens (checked by introspection).
        getResourceServerInfo: (ctx, resource) => ({
          scope: 'system/*.rs system/*.cruds patient/*.rs',
          audience: resource,
          accessTokenTTL: 600,
          ...(resource.includes('opaque')
            ? { accessTokenFormat: 'opaque' }
            : { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } }),
        }),
      },
    },
    extraTokenClaims: (ctx, token) => {
      const client = ctx.oidc.client;
      return client && client.tenant ? { tenant: client.tenant } : undefined;
    },
  });
  provider.proxy = false;
  return provider;
}

let provider = build();

const server = https.createServer(
  { key: fs.readFileSync(`${dir}/server.key`), cert: fs.readFileSync(`${dir}/server.pem`) },
  (req, res) => {
    if (req.url.startsWith('/admin/') && req.method === 'POST') {
      const action = req.url.slice('/admin/'.length);
      if (action === 'rotate') {
        keys = [newKey(), ...keys];
        provider = build();
      } else if (action === 'reuse-kid') {
        keys = [{ ...newKey(), kid: keys[0].kid }, ...keys.slice(1)];
        provider = build();
      } else if (action === 'retire') {
        keys = [keys[0]];
        provider = build();
      } else if (action === 'offline') {
        online = false;
      } else if (action === 'online') {
        online = true;
      } else {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kids: keys.map((k) => k.kid), online }));
      return;
    }
    if (!online) {
      req.socket.destroy();
      return;
    }
    provider.callback()(req, res);
  },
);
server.keepAliveTimeout = 1000;
server.listen(port, '127.0.0.1', () => console.log(`idp listening on ${issuer}`));
