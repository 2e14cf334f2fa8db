#!/usr/bin/env node
// A minimal Sparkplug B host application: MQTT.js and Eclipse Tahu's payload decoder
// (sparkplug-payload), for tests/test_sparkplug_interop.py: it is how a third party's
// host reads Derrick's agent.
//
//   node host.js PORT GROUP SECONDS [--rebirth NODE]
//
// Subscribes spBv1.0/GROUP/# and prints every message as one JSON line for SECONDS:
// {"topic", "type", "node", "device", "seq", "timestamp", "hex" (the payload),
//  "metrics": [{name, alias, type, value, properties, isHistorical, isNull, field}]}
// where "field" is the protobuf value field that was set (intValue, longValue, ...).
// 64-bit numbers (Long) are printed as numbers when exact, else as decimal strings.
//
// Data metrics sent by alias carry neither name nor datatype (spec 3.0: the datatype
// SHOULD NOT be repeated in DATA messages); as a host does, the datatype and name are
// taken from the alias table of the device's (or node's) last birth before Tahu's
// decoder reads the value. Such a metric has "name" from the birth and "byAlias": true.
//
// --rebirth NODE: after the first DDATA of NODE, publish an NCMD "Node Control/Rebirth"
// (once) and print {"event": "rebirth requested"}. {"event": "subscribed"} is printed
// once the subscription is acknowledged.

"use strict";

const mqtt = require("mqtt");
const Long = require("long");
const sparkplug = require("sparkplug-payload").get("spBv1.0");
const proto = require("sparkplug-payload/lib/sparkplugPayloadProto");

const Payload = proto.org.eclipse.tahu.protobuf.Payload;

function usage(why) {
  process.stderr.write(`host.js: ${why}\nusage: node host.js PORT GROUP SECONDS [--rebirth NODE]\n`);
  process.exit(2);
}

const argv = process.argv.slice(2);
let rebirthNode = null;
const positional = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--rebirth") rebirthNode = argv[++i];
  else if (argv[i].startsWith("--")) usage(`unknown option ${argv[i]}`);
  else positional.push(argv[i]);
}
if (positional.length !== 3) usage("want PORT GROUP SECONDS");
const [port, group, seconds] = [Number(positional[0]), positional[1], Number(positional[2])];

function say(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

function plain(value) {
  if (Long.isLong(value)) {
    const text = value.toString();
    return Number.isSafeInteger(Number(text)) ? Number(text) : text;
  }
  if (value instanceof Uint8Array) return Buffer.from(value).toString("hex");
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

// alias -> {name, datatype} per "node" or "node/device", from the last birth
const aliasTables = new Map();

function decode(kind, scope, bytes) {
  const raw = Payload.decode(bytes);
  const byAlias = new Set();
  if (kind === "NBIRTH" || kind === "DBIRTH") {
    const table = new Map();
    for (const m of raw.metrics) {
      if (m.alias !== null && m.alias !== undefined && m.hasOwnProperty("alias")) {
        table.set(Long.fromValue(m.alias).toString(), { name: m.name, datatype: m.datatype });
      }
    }
    aliasTables.set(scope, table);
  } else {
    const table = aliasTables.get(scope) || new Map();
    raw.metrics.forEach((m, i) => {
      if (m.name || !m.hasOwnProperty("alias")) return;
      const known = table.get(Long.fromValue(m.alias).toString());
      if (!known) return;
      if (!m.datatype) m.datatype = known.datatype;
      byAlias.add(i);
    });
  }
  // Tahu's decoder reads the values, with the datatypes the births gave.
  const payload = sparkplug.decodePayload(Payload.encode(raw).finish());
  const metrics = (payload.metrics || []).map((m, i) => {
    const out = plain(m);
    out.field = raw.metrics[i].value || null; // the oneof's set field
    if (raw.metrics[i].hasOwnProperty("isNull")) out.isNull = raw.metrics[i].isNull;
    if (byAlias.has(i)) {
      out.byAlias = true;
      out.name = aliasTables.get(scope).get(Long.fromValue(raw.metrics[i].alias).toString()).name;
    }
    return out;
  });
  return { ...plain({ seq: payload.seq, timestamp: payload.timestamp }), metrics };
}

const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
  clientId: `tahu-host-${group}-${process.pid}`,
  clean: true,
  reconnectPeriod: 0,
});
let rebirthSent = false;

client.on("connect", () => {
  client.subscribe(`spBv1.0/${group}/#`, { qos: 1 }, (error) => {
    if (error) {
      process.stderr.write(`host.js: subscribe failed: ${error.message}\n`);
      process.exit(1);
    }
    say({ event: "subscribed" });
  });
});

client.on("message", (topic, bytes) => {
  const [, , kind, node, device] = topic.split("/");
  const line = { topic, type: kind, node, device: device || null, hex: bytes.toString("hex") };
  if (kind === "NCMD" || kind === "DCMD" || kind === "NBIRTH" || kind === "NDEATH" ||
      kind === "DBIRTH" || kind === "DDEATH" || kind === "NDATA" || kind === "DDATA") {
    try {
      Object.assign(line, decode(kind, device ? `${node}/${device}` : node, bytes));
    } catch (error) {
      line.error = `Tahu could not decode it: ${error.message}`;
    }
  }
  say(line);
  if (kind === "DDATA" && node === rebirthNode && !rebirthSent) {
    rebirthSent = true;
    const ncmd = sparkplug.encodePayload({
      timestamp: Date.now(),
      metrics: [{ name: "Node Control/Rebirth", type: "Boolean", value: true }],
    });
    client.publish(`spBv1.0/${group}/NCMD/${node}`, Buffer.from(ncmd), { qos: 0 }, () =>
      say({ event: "rebirth requested", node }),
    );
  }
});

client.on("error", (error) => {
  process.stderr.write(`host.js: MQTT error: ${error.message}\n`);
  process.exit(1);
});

setTimeout(() => {
  say({ event: "done" });
  client.end(false, {}, () => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
}, seconds * 1000);
