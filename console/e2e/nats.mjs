// Test support: removing a run's JetStream streams without a NATS client
// library.

import net from 'node:net';

/**
 * Deletes every JetStream stream named `<prefix>_...`, speaking the NATS
 * text protocol directly (as .ci/nats-delete-streams.py does): the machine
 * has no NATS client library.
 */
export async function deleteStreams(natsUrl, prefix) {
  const u = new URL(natsUrl.replace(/^nats:/, 'http:'));
  const socket = net.createConnection({ host: u.hostname, port: Number(u.port || 4222) });
  socket.setTimeout(10_000, () => socket.destroy(new Error('NATS timed out')));
  let buffer = Buffer.alloc(0);
  const waiting = [];
  const inbox = `_INBOX.fulfil_e2e_${suffix}`;
  let failed = null;
  socket.on('error', (e) => {
    failed = e;
    while (waiting.length) waiting.shift().reject(e);
  });
  socket.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk]);
    for (;;) {
      const end = buffer.indexOf('\r\n');
      if (end < 0) return;
      const line = buffer.subarray(0, end).toString();
      if (line.startsWith('MSG ')) {
        const size = Number(line.split(' ').pop());
        if (buffer.length < end + 2 + size + 2) return;
        const body = buffer.subarray(end + 2, end + 2 + size).toString();
        buffer = buffer.subarray(end + 2 + size + 2);
        waiting.shift()?.resolve(JSON.parse(body));
        continue;
      }
      buffer = buffer.subarray(end + 2);
      if (line.startsWith('PING')) socket.write('PONG\r\n');
      else if (line.startsWith('-ERR')) waiting.shift()?.reject(new Error(line));
    }
  });
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const auth = u.username ? { user: decodeURIComponent(u.username), pass: decodeURIComponent(u.password) } : {};
  socket.write(`CONNECT ${JSON.stringify({ verbose: false, pedantic: false, ...auth })}\r\nSUB ${inbox} 1\r\n`);
  const request = (subject, payload = '{}') =>
    new Promise((resolve, reject) => {
      if (failed) return reject(failed);
      waiting.push({ resolve, reject });
      socket.write(`PUB ${subject} ${inbox} ${Buffer.byteLength(payload)}\r\n${payload}\r\n`);
    });
  try {
    const names = [];
    for (let offset = 0, i = 0; i < 100; i++) {
      const answer = await request('$JS.API.STREAM.NAMES', JSON.stringify({ offset }));
      const page = answer.streams || [];
      names.push(...page);
      offset += page.length;
      if (!page.length || offset >= (answer.total || 0)) break;
    }
    const deleted = [];
    for (const name of names.filter((n) => n.startsWith(`${prefix}_`))) {
      const answer = await request(`$JS.API.STREAM.DELETE.${name}`);
      if (!answer.success) throw new Error(`deleting stream ${name}: ${JSON.stringify(answer)}`);
      deleted.push(name);
    }
    return deleted;
  } finally {
    socket.destroy();
  }
}
