#!/usr/bin/env node
// A Sparkplug B edge node made with Eclipse Tahu's JavaScript client (sparkplug-client),
// for tests/test_sparkplug_interop.py: it is what a third party's edge node sends to
// Derrick's collector.
//
//   node edge_node.js PORT GROUP NODE DEVICE [--data N] [--aliases] [--end will|stop]
//
// NBIRTH (Tahu adds bdSeq), a DBIRTH with one metric of each kind (Double with the
// engUnit property "bar", Int32, Int64, UInt32, Boolean, String; names with a '/'
// folder), N DDATA with known values (by alias with --aliases, else by name), a DDEATH,
// then the end of the session:
//   --end will   the connection is dropped without DISCONNECT, so the broker sends the
//                NDEATH the client registered as its will (the default);
//   --end stop   Tahu's stop() with publishDeath: the client publishes NDEATH itself and
//                disconnects.
// An NCMD "Node Control/Rebirth" is answered with the births, as Tahu's examples do.
//
// stdout: one JSON object a line: {"sent": TYPE, "topic", "seq", "timestamp",
// "metrics": [{name, alias, type, value, properties}]} for every message published
// (the will as {"sent": "NDEATH", "will": true}), {"event": ...} for the rest.

"use strict";

const sparkplug = require("sparkplug-client");

function usage(why) {
  process.stderr.write(`edge_node.js: ${why}\n`);
  process.stderr.write(
    "usage: node edge_node.js PORT GROUP NODE DEVICE [--data N] [--aliases] [--end will|stop]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const positional = [];
  const options = { data: 5, aliases: false, end: "will" };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--data") options.data = Number(argv[++i]);
    else if (arg === "--aliases") options.aliases = true;
    else if (arg === "--end") options.end = argv[++i];
    else if (arg.startsWith("--")) usage(`unknown option ${arg}`);
    else positional.push(arg);
  }
  if (positional.length !== 4) usage("want PORT GROUP NODE DEVICE");
  if (!Number.isInteger(options.data) || options.data < 0) usage("--data wants a count");
  if (!["will", "stop"].includes(options.end)) usage("--end wants will or stop");
  const [port, group, node, device] = positional;
  return { port: Number(port), group, node, device, ...options };
}

const args = parseArgs(process.argv.slice(2));

function say(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

// The device's metrics: name, alias, Sparkplug type, engineering unit, value of reading i
// (i = 0 is the value in the DBIRTH).
const METRICS = [
  { name: "Inputs/pressure", alias: 1, type: "Double", unit: "bar", at: (i) => 1.5 + i * 0.25 },
  { name: "count", alias: 2, type: "Int32", at: (i) => -7 * i - 1 },
  { name: "offset", alias: 3, type: "Int64", at: (i) => -(2 ** 40) - i },
  { name: "Totals/energy", alias: 4, type: "UInt32", unit: "kWh", at: (i) => 4000000000 + i },
  { name: "Status/running", alias: 5, type: "Boolean", at: (i) => i % 2 === 1 },
  { name: "state", alias: 6, type: "String", at: (i) => `step-${i}` },
];

function metric(spec, i, ms, birth) {
  const out = { type: spec.type, value: spec.at(i), timestamp: ms };
  if (birth || !args.aliases) out.name = spec.name;
  if (args.aliases) out.alias = spec.alias;
  if (birth && spec.unit) out.properties = { engUnit: { type: "String", value: spec.unit } };
  return out;
}

const topicBase = `spBv1.0/${args.group}`;
const deviceTopic = (kind) => `${topicBase}/${kind}/${args.node}/${args.device}`;

const client = sparkplug.newClient({
  serverUrl: `mqtt://127.0.0.1:${args.port}`,
  username: "",
  password: "",
  groupId: args.group,
  edgeNode: args.node,
  clientId: `tahu-${args.group}-${args.node}`,
  publishDeath: args.end === "stop",
  version: "spBv1.0",
  keepalive: 5,
  // One session: a reconnect would publish new births the test does not expect.
  mqttOptions: { reconnectPeriod: 0 },
});

// Tahu's publish* methods number the payload (seq) in place: what is printed after the
// call is what went out. The payload objects are copied first because Tahu's encoder
// does not change them otherwise.
function report(kind, topic, payload) {
  say({ sent: kind, topic, seq: payload.seq, timestamp: payload.timestamp, metrics: payload.metrics });
}

function births() {
  const ms = Date.now();
  const nbirth = {
    timestamp: ms,
    metrics: [{ name: "Node Control/Rebirth", type: "Boolean", value: false }],
  };
  client.publishNodeBirth(nbirth); // adds seq 0 and the bdSeq metric
  report("NBIRTH", `${topicBase}/NBIRTH/${args.node}`, nbirth);
  const dbirth = { timestamp: ms, metrics: METRICS.map((spec) => metric(spec, 0, ms, true)) };
  client.publishDeviceBirth(args.device, dbirth);
  report("DBIRTH", deviceTopic("DBIRTH"), dbirth);
  return ms;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let started = false;

async function run() {
  const born = births();
  for (let i = 1; i <= args.data; i++) {
    const ms = born + i * 10; // distinct, known timestamps
    const ddata = { timestamp: ms, metrics: METRICS.map((spec) => metric(spec, i, ms, false)) };
    client.publishDeviceData(args.device, ddata);
    report("DDATA", deviceTopic("DDATA"), ddata);
    await sleep(20);
  }
  const ddeath = { timestamp: born + (args.data + 1) * 10 };
  client.publishDeviceDeath(args.device, ddeath);
  report("DDEATH", deviceTopic("DDEATH"), ddeath);
  await sleep(300); // QoS 0: let the socket drain before the session ends
  if (args.end === "stop") {
    client.stop(); // publishes NDEATH (publishDeath), then DISCONNECT
    say({ sent: "NDEATH", topic: `${topicBase}/NDEATH/${args.node}`, will: false });
    await sleep(300);
    process.exit(0);
  }
  // No DISCONNECT: the broker publishes the will (Tahu's NDEATH with the bdSeq of NBIRTH).
  say({ sent: "NDEATH", topic: `${topicBase}/NDEATH/${args.node}`, will: true });
  client.client.stream.destroy();
  process.exit(0);
}

client.on("birth", () => {
  if (started) return;
  started = true;
  say({ event: "connected" });
  run().catch((error) => {
    process.stderr.write(`edge_node.js: ${error.stack || error}\n`);
    process.exit(1);
  });
});

client.on("ncmd", (payload) => {
  const rebirth = (payload.metrics || []).some(
    (m) => m.name === "Node Control/Rebirth" && m.value === true,
  );
  say({ event: "ncmd", rebirth });
  if (rebirth) births();
});

client.on("error", (error) => {
  process.stderr.write(`edge_node.js: MQTT error: ${error.message}\n`);
  process.exit(1);
});

setTimeout(() => {
  process.stderr.write("edge_node.js: not done within 20 s\n");
  process.exit(1);
}, 20000).unref();
