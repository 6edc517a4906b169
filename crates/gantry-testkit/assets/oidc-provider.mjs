// A real OpenID provider for Gantry's tests: the `oidc-provider` npm package (installed by
// scripts/test.sh into target/test-tools/oidc-provider), configured with one confidential client.
//
// Started by `gantry_testkit::oidc::OidcProvider`, which passes everything through the
// environment and reads the first stdout line, `listening <port>`, to learn the port:
//   GANTRY_TEST_NODE_MODULES  the node_modules directory holding oidc-provider
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET  the test client's credentials
//   OIDC_RESOURCE  the resource indicator whose access tokens are JWTs
//
// What the client may do:
// - client_credentials: without `resource`, an opaque access token (for introspection);
//   with `resource=$OIDC_RESOURCE`, a JWT access token with that audience (for bearer checks).
// - authorization_code with PKCE (S256), through the built-in development login and consent
//   pages, which a test drives with plain HTTP: any login name and password sign in.
// - token introspection and revocation, authenticated like the token endpoint.
// Redirect URIs are loopback URIs of a native client, so any port matches (RFC 8252 §7.3):
// the gateway under test listens on a port chosen by the system.

import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.env.GANTRY_TEST_NODE_MODULES;
if (!modules) {
  console.error('GANTRY_TEST_NODE_MODULES is not set');
  process.exit(2);
}
const entry = createRequire(join(modules, 'resolve.js')).resolve('oidc-provider');
const { default: Provider } = await import(pathToFileURL(entry).href);
const { generateKeyPair, exportJWK } = await import(
  pathToFileURL(createRequire(entry).resolve('jose')).href
);

const clientId = process.env.OIDC_CLIENT_ID ?? 'gantry';
const clientSecret = process.env.OIDC_CLIENT_SECRET ?? 'gantry-test-secret';
const resource = process.env.OIDC_RESOURCE ?? 'urn:gantry:test-api';

// A fresh signing key per run: nothing secret is committed, and the JWKS is what the
// gateway must fetch to verify tokens.
const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingKey = { ...(await exportJWK(privateKey)), kid: `test-${Date.now()}`, alg: 'RS256', use: 'sig' };

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      application_type: 'native',
      grant_types: ['authorization_code', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/oidc/callback', 'http://localhost/oidc/callback'],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'openid profile email orders:read orders:write',
    },
  ],
  jwks: { keys: [signingKey] },
  scopes: ['openid', 'profile', 'email', 'offline_access', 'orders:read', 'orders:write'],
  claims: { openid: ['sub'], profile: ['name'], email: ['email'] },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, name: `Test user ${sub}`, email: `${sub}@example.test` }),
  }),
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: () => false,
      getResourceServerInfo: (_ctx, indicator) => {
        if (indicator !== resource) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'orders:read orders:write',
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: { ClientCredentials: 600, AccessToken: 600, IdToken: 600, AuthorizationCode: 60 },
});
// Plain HTTP on loopback: the provider must not insist on TLS for its cookies.
provider.proxy = false;

server.on('request', provider.callback());
console.log(`listening ${port}`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
