// A small MQTT 3.1.1 client over WebSocket, for the dashboard's live topic viewer:
// CONNECT, SUBSCRIBE (QoS 1 at most), incoming PUBLISH (QoS 1 acknowledged), keep-alive.
// It has no dependency, so the dashboard needs no build step.
"use strict";

class MiniMqtt {
  constructor(url, options) {
    this.url = url;
    this.clientId = options.clientId;
    this.username = options.username || "";
    this.password = options.password || "";
    this.keepAlive = 30;
    this.onMessage = () => {};
    this.onClose = () => {};
    this.buffer = new Uint8Array(0);
    this.nextId = 1;
    this.pending = new Map();
  }

  static utf8(s) { return new TextEncoder().encode(s); }

  static str(s) {
    const b = MiniMqtt.utf8(s);
    return [b.length >> 8, b.length & 255, ...b];
  }

  static packet(first, body) {
    const len = [];
    let n = body.length;
    do {
      let digit = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) digit |= 128;
      len.push(digit);
    } while (n > 0);
    return new Uint8Array([first, ...len, ...body]);
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, ["mqtt"]);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this.connected = { resolve, reject };
      ws.onopen = () => {
        let flags = 0x02; // clean session
        const body = [...MiniMqtt.str("MQTT"), 4, 0, this.keepAlive >> 8, this.keepAlive & 255];
        const payload = [...MiniMqtt.str(this.clientId)];
        if (this.username) { flags |= 0x80; payload.push(...MiniMqtt.str(this.username)); }
        if (this.password) { flags |= 0x40; payload.push(...MiniMqtt.str(this.password)); }
        body[7] = flags;
        ws.send(MiniMqtt.packet(0x10, [...body, ...payload]));
      };
      ws.onmessage = (e) => this.receive(new Uint8Array(e.data));
      ws.onerror = () => reject(new Error("WebSocket error (is the ws listener reachable?)"));
      ws.onclose = () => {
        clearInterval(this.pinger);
        if (this.connected) this.connected.reject(new Error("connection closed"));
        this.onClose();
      };
    });
  }

  subscribe(filter) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.ws.send(MiniMqtt.packet(0x82, [id >> 8, id & 255, ...MiniMqtt.str(filter), 1]));
    });
  }

  close() {
    clearInterval(this.pinger);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(new Uint8Array([0xe0, 0]));
    }
    if (this.ws) this.ws.close();
  }

  receive(bytes) {
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer);
    joined.set(bytes, this.buffer.length);
    this.buffer = joined;
    for (;;) {
      let len = 0, mult = 1, i = 1;
      for (;; i++) {
        if (i >= this.buffer.length) return;
        len += (this.buffer[i] & 127) * mult;
        mult *= 128;
        if ((this.buffer[i] & 128) === 0) break;
      }
      const start = i + 1;
      if (this.buffer.length < start + len) return;
      this.handle(this.buffer[0], this.buffer.slice(start, start + len));
      this.buffer = this.buffer.slice(start + len);
    }
  }

  handle(first, body) {
    switch (first >> 4) {
      case 2: { // CONNACK
        const done = this.connected;
        this.connected = null;
        if (body[1] === 0) {
          this.pinger = setInterval(() => this.ws.send(new Uint8Array([0xc0, 0])), this.keepAlive * 750);
          done.resolve();
        } else {
          done.reject(new Error("connection refused, return code " + body[1]));
        }
        break;
      }
      case 9: { // SUBACK
        const id = (body[0] << 8) | body[1];
        const done = this.pending.get(id);
        this.pending.delete(id);
        if (done) done(body[2]);
        break;
      }
      case 3: { // PUBLISH
        const qos = (first >> 1) & 3;
        const topicLen = (body[0] << 8) | body[1];
        const topic = new TextDecoder().decode(body.slice(2, 2 + topicLen));
        let at = 2 + topicLen;
        if (qos > 0) {
          const id = [body[at], body[at + 1]];
          at += 2;
          this.ws.send(new Uint8Array([0x40, 2, ...id]));
        }
        this.onMessage({ topic, qos, retain: (first & 1) === 1, payload: body.slice(at) });
        break;
      }
      default:
        break;
    }
  }
}

window.MiniMqtt = MiniMqtt;
