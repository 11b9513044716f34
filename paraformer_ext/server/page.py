"""The web page at `/`, served over plain HTTP(S) on the websocket's own port (websockets' process_request).

A file or the microphone, the mode, hotwords; the text as it arrives and the timestamps. In offline mode a
chosen file is sent as it is (wav_format = its extension) and the server reads it with soundfile, exactly as
`paraformer-ext transcribe` reads it; in 2pass/online mode the browser decodes it to 16 kHz PCM and streams
it. The microphone needs a secure context: http://localhost, or https (serve with --certfile/--keyfile).
"""
from __future__ import annotations

from http import HTTPStatus

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>paraformer_ext server</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}
fieldset{border:1px solid #ccc;border-radius:6px;margin:.6rem 0;padding:.6rem}
label{margin-right:1rem} input[type=text]{width:22rem}
button{padding:.35rem .9rem;margin-right:.5rem}
#transcript{font-size:1.25rem;min-height:2.5rem;border:1px solid #ddd;border-radius:6px;padding:.6rem;white-space:pre-wrap}
#partial{color:#888} #status{color:#555;margin:.4rem 0}
table{border-collapse:collapse;margin-top:.6rem;font-size:.9rem} td,th{border:1px solid #ddd;padding:.2rem .5rem}
</style></head><body>
<h1>paraformer_ext speech recognition</h1>
<fieldset><legend>Audio</legend>
<label><input type="radio" name="src" value="file" checked> file</label> <input type="file" id="file" accept="audio/*,.wav,.flac,.ogg,.mp3,.pcm">
<br><label><input type="radio" name="src" value="mic"> microphone</label>
</fieldset>
<fieldset><legend>Options</legend>
<label>mode <select id="mode"><option>offline</option><option selected>2pass</option><option>online</option></select></label>
<label>hotwords <input type="text" id="hotwords" placeholder='阿里巴巴, 通义 or {"阿里巴巴": 20}'></label>
</fieldset>
<button id="start">Start</button><button id="stop" disabled>Stop</button>
<div id="status">idle</div>
<div id="transcript"><span id="final"></span><span id="partial"></span></div>
<table id="stamps"><thead><tr><th>segment</th><th>start (ms)</th><th>end (ms)</th><th>text</th><th>tokens [start, end] ms</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const $ = id => document.getElementById(id);
let ws = null, mic = null, finals = [];
function status(s) { $("status").textContent = s; }
function showFinal() { $("final").textContent = finals.filter(t => t).join(" "); }
function addStamps(sents) {
  for (const s of sents || []) {
    const tr = document.createElement("tr");
    for (const v of [$("stamps").tBodies[0].rows.length + 1, s.start, s.end, s.text_seg, JSON.stringify(s.ts_list)]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    $("stamps").tBodies[0].appendChild(tr);
  }
}
function onMessage(ev) {
  const m = JSON.parse(ev.data);
  if (m.error) { status("error: " + (m.error.message || JSON.stringify(m.error))); return; }
  if (m.mode === "2pass-online" || m.mode === "online") {
    $("partial").textContent += m.text;
    if (m.mode === "online" && m.is_final) { finals.push($("partial").textContent); $("partial").textContent = ""; showFinal(); }
  } else if (m.mode === "2pass-offline" || m.mode === "offline") {
    $("partial").textContent = "";
    finals.push(m.text); showFinal(); addStamps(m.stamp_sents);
  }
  if (m.is_final) { status("done"); finish(); }
}
function finish() {
  $("start").disabled = false; $("stop").disabled = true;
  if (mic) { mic.stop(); mic = null; }
  if (ws) { ws.close(); ws = null; }
}
function open(first) {
  return new Promise((resolve, reject) => {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
    ws = new WebSocket(url); ws.binaryType = "arraybuffer";
    ws.onopen = () => { ws.send(JSON.stringify(first)); resolve(); };
    ws.onmessage = onMessage;
    ws.onerror = () => { status("connection error"); reject(new Error("websocket error")); };
    ws.onclose = ev => { if ($("status").textContent !== "done" && ev.code !== 1000) status("closed: " + ev.code + " " + ev.reason); };
  });
}
function int16(f32) {
  const out = new Int16Array(f32.length);
  for (let i = 0; i < f32.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(f32[i] * 32768)));
  return out;
}
function hotwords() { const h = $("hotwords").value.trim(); return h || undefined; }
async function sendFile(f, mode) {
  const bytes = await f.arrayBuffer();
  const name = f.name.replace(/\.[^.]*$/, "");
  const ext = (f.name.match(/\.([^.]+)$/) || [, "wav"])[1].toLowerCase();
  if (mode === "offline" && ext !== "pcm") {
    await open({mode, wav_name: name, wav_format: ext, is_speaking: true, hotwords: hotwords(), itn: true});
    for (let i = 0; i < bytes.byteLength; i += 65536) ws.send(bytes.slice(i, i + 65536));
  } else {
    let pcm;
    if (ext === "pcm") pcm = new Int16Array(bytes);
    else {
      const ctx = new AudioContext({sampleRate: 16000});
      const buf = await ctx.decodeAudioData(bytes);
      const ch = buf.getChannelData(0);
      pcm = int16(ch); ctx.close();
    }
    await open({mode, wav_name: name, wav_format: "pcm", audio_fs: 16000, chunk_size: [5, 10, 5], chunk_interval: 10,
                is_speaking: true, hotwords: hotwords(), itn: true});
    const step = 960 * 10;  // 600 ms per frame
    for (let i = 0; i < pcm.length; i += step) ws.send(pcm.slice(i, i + step).buffer);
  }
  ws.send(JSON.stringify({is_speaking: false}));
  status("recognizing…");
}
async function startMic(mode) {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const ctx = new AudioContext();
  const srcNode = ctx.createMediaStreamSource(stream);
  const proc = ctx.createScriptProcessor(4096, 1, 1);
  await open({mode, wav_name: "microphone", wav_format: "pcm", audio_fs: ctx.sampleRate, chunk_size: [5, 10, 5],
              chunk_interval: 10, is_speaking: true, hotwords: hotwords(), itn: true});
  proc.onaudioprocess = e => { if (ws && ws.readyState === 1) ws.send(int16(e.inputBuffer.getChannelData(0)).buffer); };
  srcNode.connect(proc); proc.connect(ctx.destination);
  mic = {stop() { proc.disconnect(); srcNode.disconnect(); stream.getTracks().forEach(t => t.stop()); ctx.close(); }};
  status("listening… press Stop to finish");
}
$("start").onclick = async () => {
  finals = []; $("final").textContent = ""; $("partial").textContent = ""; $("stamps").tBodies[0].innerHTML = "";
  $("start").disabled = true; $("stop").disabled = false;
  const mode = $("mode").value;
  try {
    if (document.querySelector("input[name=src]:checked").value === "mic") await startMic(mode);
    else {
      const f = $("file").files[0];
      if (!f) { status("choose a file first"); finish(); return; }
      status("sending…"); await sendFile(f, mode);
    }
  } catch (e) { status("error: " + e.message); finish(); }
};
$("stop").onclick = () => {
  if (mic) { mic.stop(); mic = null; }
  if (ws && ws.readyState === 1) { ws.send(JSON.stringify({is_speaking: false})); status("recognizing…"); }
  $("stop").disabled = true;
};
</script></body></html>
"""


def page_response(connection, request):
    """`/` (and /index.html): the page; anything else that is not a websocket upgrade: 404."""
    path = request.path.split("?", 1)[0]
    if path in ("/", "/index.html"):
        resp = connection.respond(HTTPStatus.OK, PAGE)
        del resp.headers["Content-Type"]  # websockets' Headers appends on assignment
        resp.headers["Content-Type"] = "text/html; charset=utf-8"
        return resp
    return connection.respond(HTTPStatus.NOT_FOUND, "not found: the page is at /, the websocket at ws(s)://host:port/\n")
