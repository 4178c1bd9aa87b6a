// Load through attache's HTTP front door: a mix of proxied requests (GET
// with a query, POST with a small JSON body) and the direct /health route.
//
//   k6 run -e TARGET=http://127.0.0.1:8080 integration/k6/front_door.js
//
// Environment: TARGET (required), VUS (default 16), DURATION (default 30s),
// P95_MS (default 250): the run fails (exit 99) when more than 1% of
// requests fail or the 95th percentile is above P95_MS.
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET;
if (!target) {
  throw new Error('set TARGET, e.g. -e TARGET=http://127.0.0.1:8080');
}

export const options = {
  vus: Number(__ENV.VUS || 16),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(95)<${Number(__ENV.P95_MS || 250)}`],
    checks: ['rate>0.99'],
  },
};

export default function () {
  const read = http.get(`${target}/echo/items?page=${__ITER % 10}`, {
    headers: { 'X-Request-Id': `k6-${__VU}-${__ITER}` },
  });
  check(read, {
    'GET is 200': (response) => response.status === 200,
    'the request id reached the app': (response) =>
      response.json('headers.x-request-id.0') === `k6-${__VU}-${__ITER}`,
  });
  const write = http.post(`${target}/echo/items`, JSON.stringify({ vu: __VU, iteration: __ITER }), {
    headers: { 'Content-Type': 'application/json' },
  });
  check(write, {
    'POST is 200': (response) => response.status === 200,
    'the body arrived whole': (response) => response.json('body_len') > 0,
  });
  const health = http.get(`${target}/health`);
  check(health, { 'health is answered by attache': (response) => response.body === 'ok\n' });
}
