// MQTT.js over WebSocket: connect to the URL in argv[2], subscribe to argv[3], print the first
// message as "<topic> <payload>" and exit 0; exit 1 on error or after 10 s.
const mqtt = require("mqtt");
const [url, topic] = process.argv.slice(2);
const client = mqtt.connect(url, { clientId: "mqttjs-" + process.pid, reconnectPeriod: 0, connectTimeout: 5000 });
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail("timeout"), 10000);
client.on("error", (e) => fail("error: " + e.message));
client.on("connect", () => {
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) fail("subscribe: " + err.message);
    console.log("subscribed");
  });
});
client.on("message", (t, payload) => {
  console.log(t + " " + payload.toString());
  // The test has its answer: leave without waiting for the close handshake.
  process.exit(0);
});
