// Sends one backfilled track call (an explicit past timestamp) with a real Node.js SDK,
// unchanged, to a relay; used by tests/acceptance/test_backfill_sdks.py.
//   node send_backfill.js segment|rudder HOST WRITE_KEY MESSAGE_ID ISO_TIME
// Prints {"version": ..., "errors": [...]} on stdout once the SDK has flushed.
'use strict';
const [sdk, host, writeKey, messageId, when] = process.argv.slice(2);
const errors = [];
const event = {
  userId: 'backfill-user',
  event: 'Order Imported',
  messageId,
  timestamp: new Date(when),
  properties: { price: 67.0, source: sdk },
};

async function main() {
  if (sdk === 'segment') {
    const { Analytics } = require('@segment/analytics-node');
    const version = require('@segment/analytics-node/package.json').version;
    const client = new Analytics({ writeKey, host, maxRetries: 2, flushAt: 1 });
    client.on('error', (err) => errors.push(String(err && (err.reason || err.message || err))));
    client.track(event);
    await client.closeAndFlush({ timeout: 30000 });
    return version;
  }
  const Analytics = require('@rudderstack/rudder-sdk-node');
  const version = require('@rudderstack/rudder-sdk-node/package.json').version;
  const client = new Analytics(writeKey, { dataPlaneUrl: host, flushAt: 1, retryCount: 2 });
  client.track(event);
  await new Promise((resolve) => {
    client.flush((err) => {
      if (err) errors.push(String(err.message || err));
      resolve();
    });
  });
  return version;
}

main().then(
  (version) => console.log(JSON.stringify({ version, errors })),
  (err) => {
    console.error(err && err.stack ? err.stack : String(err));
    process.exit(1);
  },
);
