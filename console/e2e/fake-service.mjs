// Test support: the HTTP service a saga's `http` step calls.

import http from 'node:http';

/**
 * What the `http` step of e2e-saga calls: 500 until `flip()`, then 200. A
 * request whose body names `always-fail` gets 500 whatever the state, for
 * runs that must end compensated after the flip.
 */
export function startFakeService() {
  let ok = false;
  const calls = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      let name = null;
      try {
        name = JSON.parse(body || '{}').name;
      } catch {
        /* not JSON */
      }
      const status = ok && name !== 'always-fail' ? 200 : 500;
      calls.push({ method: req.method, url: req.url, name, status });
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status === 200 ? { provisioned: name } : { error: 'fake outage' }));
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        flip: () => (ok = true),
        calls,
        close: () => new Promise((r) => server.close(() => r())),
      }),
    );
  });
}
