// Drives blindpass with Cloudflare's privacypass-ts, an implementation nobody
// on this project wrote. Modes:
//
//   flow BASE API_KEY RELAY_TOKEN RELAY_SECRET
//     Fetches the sandbox issuer directory, takes the RFC 9577 challenge from
//     generate-claim's 401, makes a TokenRequest with privacypass-ts, gets it
//     signed by POST /token-request, finalizes, verifies the token with
//     privacypass-ts's own Origin.verify, and redeems it at generate-claim.
//
//   batch BASE API_KEY RELAY_TOKEN RELAY_SECRET COUNT
//     The same with privacypass-ts's genericBatched client: COUNT type-2
//     TokenRequests in one generic batch (draft-ietf-privacypass-batched-tokens)
//     to the issuer URI, each response item finalized, verified with
//     Origin.verify, and redeemed at generate-claim.
//
//   private BASE API_KEY RELAY_TOKEN RELAY_SECRET
//     Token type 1 (VOPRF P-384) with privacypass-ts's privateVerif client:
//     the type-1 challenge of generate-claim's 401 and its token-key (checked
//     against the directory's type-1 key), a TokenRequest signed by
//     POST /token-request, finalized (privacypass-ts verifies the DLEQ
//     proof), and redeemed at generate-claim, twice (the second time at the
//     same relay, which answers with the stored claim).
//
//   verify TOKEN_HEX TOKEN_KEY_B64URL
//     Verifies a Token made by blindpass's Rust client with Origin.verify.
//
//   jwe-keypair
//     panva's jose makes an RSA-OAEP-256 key pair (2048 bits); prints the
//     public JWK (with alg and a kid) and the private JWK.
//
//   jwe-decrypt PRIVATE_JWK_JSON COMPACT_JWE
//     jose decrypts a compact JWE that blindpass made, allowing only
//     RSA-OAEP-256 / A256GCM; prints the protected header and the plaintext.
//
// Prints one JSON object on stdout.
import * as jose from 'jose';
import { publicVerif, privateVerif, genericBatched, TOKEN_TYPES, WWWAuthenticateHeader, AuthorizationHeader, Token } from '@cloudflare/privacypass-ts';

const { Client, Origin, BlindRSAMode, convertRSASSAPSSToEnc } = publicVerif;

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const unhex = (text) => new Uint8Array(Buffer.from(text, 'hex'));
const b64url = (text) => new Uint8Array(Buffer.from(text.replace(/-/g, '+').replace(/_/g, '/'), 'base64'));

async function importIssuerKey(rfc9578Spki) {
  // WebCrypto imports only the rsaEncryption SPKI; privacypass-ts converts.
  const spki = convertRSASSAPSSToEnc(rfc9578Spki);
  return crypto.subtle.importKey('spki', spki, { name: 'RSA-PSS', hash: 'SHA-384' }, true, ['verify']);
}

async function flow([base, apiKey, relayToken, relaySecret]) {
  const directory = await (await fetch(`${base}/.well-known/private-token-issuer-directory?sandbox=true`)).json();
  const directoryKey = b64url(directory['token-keys'][0]['token-key']);

  const claimUrl = `${base}/api/privacy/v1/relays/${relayToken}/generate-claim`;
  const unauthenticated = await fetch(claimUrl, {
    method: 'POST',
    headers: { 'Persona-Relay-Secret': relaySecret, 'Content-Type': 'application/json' },
    body: '{}',
  });
  const [challengeHeader] = WWWAuthenticateHeader.parse(unauthenticated.headers.get('WWW-Authenticate'));

  const client = new Client(BlindRSAMode.PSS);
  const request = await client.createTokenRequest(challengeHeader.challenge, challengeHeader.tokenKey);
  const issued = await fetch(new URL(directory['issuer-request-uri'], base), {
    method: 'POST',
    headers: {
      Authorization: `Bearer ${apiKey}`,
      'Content-Type': 'application/private-token-request',
      Accept: 'application/private-token-response',
    },
    body: request.serialize(),
  });
  if (issued.status !== 200) throw new Error(`token-request: ${issued.status} ${await issued.text()}`);
  const token = await client.finalize(client.deserializeTokenResponse(new Uint8Array(await issued.arrayBuffer())));

  const origin = new Origin(BlindRSAMode.PSS);
  const verified = await origin.verify(token, await importIssuerKey(challengeHeader.tokenKey));

  const redeemed = await fetch(claimUrl, {
    method: 'POST',
    headers: {
      'Persona-Relay-Secret': relaySecret,
      'Content-Type': 'application/json',
      Authorization: new AuthorizationHeader(token).toString(),
    },
    body: '{}',
  });
  const claim = await redeemed.json();
  return {
    unauthenticatedStatus: unauthenticated.status,
    directoryKeyMatchesChallengeKey: hex(directoryKey) === hex(challengeHeader.tokenKey),
    tokenRequestContentType: issued.headers.get('Content-Type'),
    verified,
    redeemStatus: redeemed.status,
    tokenConsumed: claim['token-consumed'],
    token: hex(token.serialize()),
  };
}

async function privateFlow([base, apiKey, relayToken, relaySecret]) {
  const directory = await (await fetch(`${base}/.well-known/private-token-issuer-directory?sandbox=true`)).json();
  const directoryKey = directory['token-keys'].find((k) => k['token-type'] === 1);
  const claimUrl = `${base}/api/privacy/v1/relays/${relayToken}/generate-claim`;
  const unauthenticated = await fetch(claimUrl, {
    method: 'POST',
    headers: { 'Persona-Relay-Secret': relaySecret, 'Content-Type': 'application/json' },
    body: '{}',
  });
  const challenges = WWWAuthenticateHeader.parse(unauthenticated.headers.get('WWW-Authenticate'));
  const challengeHeader = challenges.find((c) => c.challenge.tokenType === 1);
  if (!challengeHeader) throw new Error('no type-1 challenge in the 401');

  const client = new privateVerif.Client();
  const request = await client.createTokenRequest(challengeHeader.challenge, challengeHeader.tokenKey);
  const issued = await fetch(new URL(directory['issuer-request-uri'], base), {
    method: 'POST',
    headers: {
      Authorization: `Bearer ${apiKey}`,
      'Content-Type': 'application/private-token-request',
      Accept: 'application/private-token-response',
    },
    body: request.serialize(),
  });
  if (issued.status !== 200) throw new Error(`token-request: ${issued.status} ${await issued.text()}`);
  const token = await client.finalize(client.deserializeTokenResponse(new Uint8Array(await issued.arrayBuffer())));

  const redeem = () =>
    fetch(claimUrl, {
      method: 'POST',
      headers: {
        'Persona-Relay-Secret': relaySecret,
        'Content-Type': 'application/json',
        Authorization: new AuthorizationHeader(token).toString(),
      },
      body: '{}',
    });
  const first = await redeem();
  const claim = await first.json();
  const again = await redeem();
  return {
    challengeTypes: challenges.map((c) => c.challenge.tokenType),
    directoryKeyMatchesChallengeKey: hex(b64url(directoryKey['token-key'])) === hex(challengeHeader.tokenKey),
    tokenLength: token.serialize().length,
    redeemStatus: first.status,
    tokenConsumed: claim['token-consumed'],
    againStatus: again.status,
    token: hex(token.serialize()),
  };
}

async function batch([base, apiKey, relayToken, relaySecret, count]) {
  const directory = await (await fetch(`${base}/.well-known/private-token-issuer-directory?sandbox=true`)).json();
  const claimUrl = `${base}/api/privacy/v1/relays/${relayToken}/generate-claim`;
  const unauthenticated = await fetch(claimUrl, {
    method: 'POST',
    headers: { 'Persona-Relay-Secret': relaySecret, 'Content-Type': 'application/json' },
    body: '{}',
  });
  const [challengeHeader] = WWWAuthenticateHeader.parse(unauthenticated.headers.get('WWW-Authenticate'));

  const clients = [];
  const items = [];
  for (let i = 0; i < Number(count); i++) {
    const client = new Client(BlindRSAMode.PSS);
    items.push(new genericBatched.TokenRequest(await client.createTokenRequest(challengeHeader.challenge, challengeHeader.tokenKey)));
    clients.push(client);
  }
  const batchClient = new genericBatched.Client();
  const issued = await fetch(new URL(directory['issuer-request-uri'], base), {
    method: 'POST',
    headers: {
      Authorization: `Bearer ${apiKey}`,
      'Content-Type': 'application/private-token-generic-batch-request',
      Accept: 'application/private-token-generic-batch-response',
    },
    body: batchClient.createTokenRequest(items).serialize(),
  });
  if (issued.status !== 200) throw new Error(`batch: ${issued.status} ${await issued.text()}`);
  const responses = [...batchClient.deserializeTokenResponse(new Uint8Array(await issued.arrayBuffer()))];

  const origin = new Origin(BlindRSAMode.PSS);
  const issuerKey = await importIssuerKey(challengeHeader.tokenKey);
  let verified = 0;
  let redeemed = 0;
  for (let i = 0; i < responses.length; i++) {
    const token = await clients[i].finalize(responses[i].tokenResponse);
    if (await origin.verify(token, issuerKey)) verified++;
    const claim = await fetch(claimUrl, {
      method: 'POST',
      headers: {
        'Persona-Relay-Secret': relaySecret,
        'Content-Type': 'application/json',
        Authorization: new AuthorizationHeader(token).toString(),
      },
      body: '{}',
    });
    if (claim.status === 200 && (await claim.json())['token-consumed'] === true) redeemed++;
  }
  return {
    status: issued.status,
    contentType: issued.headers.get('Content-Type'),
    items: responses.length,
    verified,
    redeemed,
  };
}

async function verify([tokenHex, tokenKeyB64url]) {
  const token = Token.deserialize(TOKEN_TYPES.BLIND_RSA, unhex(tokenHex));
  const origin = new Origin(BlindRSAMode.PSS);
  return { verified: await origin.verify(token, await importIssuerKey(b64url(tokenKeyB64url))) };
}

async function jweKeypair() {
  const { publicKey, privateKey } = await jose.generateKeyPair('RSA-OAEP-256', { modulusLength: 2048, extractable: true });
  const pub = { ...(await jose.exportJWK(publicKey)), alg: 'RSA-OAEP-256', kid: 'interop-key-1' };
  return { public: pub, private: { ...(await jose.exportJWK(privateKey)), alg: 'RSA-OAEP-256' } };
}

async function jweDecrypt([privateJwk, compact]) {
  const key = await jose.importJWK(JSON.parse(privateJwk), 'RSA-OAEP-256');
  const { plaintext, protectedHeader } = await jose.compactDecrypt(compact, key, {
    keyManagementAlgorithms: ['RSA-OAEP-256'],
    contentEncryptionAlgorithms: ['A256GCM'],
  });
  return { header: protectedHeader, plaintext: new TextDecoder().decode(plaintext) };
}

const [mode, ...args] = process.argv.slice(2);
const modes = { flow, batch, private: privateFlow, verify, 'jwe-keypair': jweKeypair, 'jwe-decrypt': jweDecrypt };
try {
  console.log(JSON.stringify(await modes[mode](args)));
} catch (e) {
  console.error(e?.stack ?? String(e));
  process.exit(1);
}
