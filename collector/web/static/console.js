// Derrick operator console: live summary rows (Server-Sent Events), flashing and an
// optional beep for new critical and high alarms, select-all, auto-submitting filters.
// Plain ES2020, no framework, no build step. The rows arrive as HTML rendered and
// escaped by the server; nothing here builds HTML from strings.
"use strict";

(() => {
  const SOUND_KEY = "derrick.console.sound";
  const LOUD = new Set(["critical", "high"]);

  // Filters submit themselves when changed (the button stays for no-script use).
  for (const select of document.querySelectorAll("select.auto-submit")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }

  const tbody = document.getElementById("summary-rows");
  if (!tbody) {
    return;
  }
  const banner = document.getElementById("banner");
  const status = document.getElementById("live-status");
  const soundButton = document.getElementById("sound-toggle");
  const selectAll = document.getElementById("select-all");

  // --- rows seen, and which are new ---------------------------------------------------

  const keyOf = (row) => `${row.dataset.alarmId}@${row.dataset.ts}`;
  const seen = new Set();
  for (const row of tbody.querySelectorAll("tr[data-alarm-id]")) {
    seen.add(keyOf(row));
  }

  // --- sound --------------------------------------------------------------------------

  let audio = null;
  const soundOn = () => localStorage.getItem(SOUND_KEY) === "on";

  function showSound() {
    const on = soundOn();
    soundButton.setAttribute("aria-pressed", on ? "true" : "false");
    soundButton.textContent = on ? "Sound on" : "Sound off";
  }

  function beep() {
    if (!soundOn()) {
      return;
    }
    try {
      audio = audio || new AudioContext();
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.08, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.35);
      osc.connect(gain).connect(audio.destination);
      osc.start();
      osc.stop(audio.currentTime + 0.35);
    } catch (err) {
      console.warn("console: no sound", err);
    }
  }

  soundButton.hidden = false;
  showSound();
  soundButton.addEventListener("click", () => {
    localStorage.setItem(SOUND_KEY, soundOn() ? "off" : "on");
    showSound();
    if (soundOn()) {
      audio = audio || new AudioContext(); // created on a click, so the browser allows it
      audio.resume();
      beep();
    }
  });

  // --- select all -----------------------------------------------------------------------

  if (selectAll) {
    selectAll.addEventListener("change", () => {
      for (const box of tbody.querySelectorAll("input.select-alarm")) {
        box.checked = selectAll.checked;
      }
    });
  }

  // --- swapping in new rows -------------------------------------------------------------

  // A row the user is working in (its checkbox or Acknowledge button focused) is kept as
  // it is until the user is done; the next update brings it up to date. The rows hold no
  // forms: their Acknowledge buttons belong to the page's one #row-ack-form, and
  // anything else is done on the alarm's own page (the "Actions…" link).
  function busy(row) {
    return row.contains(document.activeElement);
  }

  function parseRow(html) {
    const template = document.createElement("template");
    template.innerHTML = `<table><tbody>${html}</tbody></table>`;
    return template.content.querySelector("tbody").firstElementChild;
  }

  // An update carries the rows that changed (by alarm id, rendered on the server and
  // escaped there), the order of all rows when it changed, and "empty" (the row saying
  // there is nothing) when there are none. Unchanged rows stay as they are.
  function applyUpdate(data) {
    const current = new Map();
    for (const row of tbody.querySelectorAll("tr[data-alarm-id]")) {
      current.set(row.dataset.alarmId, row);
    }
    const order = data.order || Array.from(current.keys());
    let loud = false;
    const next = [];
    for (const id of order) {
      const html = data.rows[id];
      const old = current.get(id);
      if (html === undefined || (old && busy(old))) {
        if (old) {
          next.push(old);
        }
        continue;
      }
      const row = parseRow(html);
      if (old && old.dataset.fp === row.dataset.fp) {
        next.push(old); // the same row (the first update after loading sends them all)
        continue;
      }
      const box = old && old.querySelector("input.select-alarm");
      const fresh = row.querySelector("input.select-alarm");
      if (box && fresh) {
        fresh.checked = box.checked;
      }
      if (!seen.has(keyOf(row))) {
        seen.add(keyOf(row));
        if (LOUD.has(row.dataset.priority) && row.dataset.unacked === "true") {
          row.classList.add("flash");
          loud = true;
        }
      }
      next.push(row);
    }
    if (data.empty !== undefined) {
      next.push(parseRow(data.empty));
    }
    tbody.replaceChildren(...next);
    if (loud) {
      beep();
    }
  }

  function showStatus(text, kind) {
    status.textContent = text;
    status.classList.toggle("connected", kind === "connected");
    status.classList.toggle("lost", kind === "lost");
  }

  // --- the event stream -----------------------------------------------------------------

  const url = tbody.dataset.events;
  if (!url || !("EventSource" in window)) {
    return;
  }
  showStatus("connecting…", "");
  const source = new EventSource(url);
  source.addEventListener("open", () => showStatus("live", "connected"));
  source.addEventListener("summary", (event) => {
    const data = JSON.parse(event.data);
    applyUpdate(data);
    banner.innerHTML = data.banner;
    tbody.dataset.version = String(data.version);
    showStatus("live", "connected");
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      showStatus("not live: reload the page (your login may have ended)", "lost");
    } else {
      showStatus("reconnecting…", "lost");
    }
  });
})();
