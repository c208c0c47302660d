"""Hostile jobs' sources, shared by the attacks of this folder and by the container image's
test (tests/image): each is the body of an ``fn(async state => { ... })`` after the vm escape
(``ESCAPE`` in conftest), ending in ``return { data: ... }`` with what it reached."""

from __future__ import annotations

import json


def js(value: object) -> str:
    return json.dumps(value)


# JS helpers the attacks share: read a process's memory through /proc/<pid>/mem, list pids
SCAN = r"""
const fs = p.getBuiltinModule('fs');
const pids = () => fs.readdirSync('/proc').filter(x => /^\d+$/.test(x)).map(Number);
const cmdline = pid => { try { return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '); } catch (e) { return ''; } };
function scanMem(pid, needle) {
  let maps;
  try { maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8'); } catch (e) { return 'maps: ' + e.code; }
  let fd;
  try { fd = fs.openSync(`/proc/${pid}/mem`, 'r'); } catch (e) { return 'mem: ' + e.code; }
  const buf = Buffer.alloc(1 << 20), n = Buffer.from(needle);
  try {
    for (const line of maps.split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) r/.exec(line);
      if (!m || line.includes('[vvar') || line.includes('[vsyscall]')) continue;
      const end = BigInt('0x' + m[2]);
      for (let a = BigInt('0x' + m[1]); a < end; a += BigInt(buf.length)) {
        const len = Number(end - a < BigInt(buf.length) ? end - a : BigInt(buf.length));
        let got;
        try { got = fs.readSync(fd, buf, 0, len, a); } catch (e) { break; }
        if (buf.subarray(0, got).indexOf(n) >= 0) return true;
      }
    }
  } finally { fs.closeSync(fd); }
  return false;
}
"""


def environ_probe(supervisor_pid: int) -> str:
    """Read ``WORKER_SECRET`` from ``/proc/<pid>/environ`` of the supervisor (its pid as the
    pool's own namespace numbers it) and of every process the job can see."""
    return SCAN + f"""
      const found = [], seen = [];
      for (const pid of [{js(supervisor_pid)}, ...pids()]) {{
        try {{
          const env = fs.readFileSync(`/proc/${{pid}}/environ`, 'utf8');
          seen.push(pid);
          const hit = env.split('\0').find(v => v.startsWith('WORKER_SECRET='));
          if (hit) found.push([pid, hit.slice('WORKER_SECRET='.length)]);
        }} catch (e) {{}}
      }}
      return {{ data: {{ found, seen, visible: pids().length }} }};"""


def trojan_probe(dist: str) -> str:
    """Change an installed adaptor's file (``dist``) three ways; the error code of each."""
    return f"""
      const fs = p.getBuiltinModule('fs');
      const tries = {{}};
      for (const [name, f] of [['append', () => fs.appendFileSync({js(dist)}, '\\n;globalThis.TROJAN = 1;\\n')],
                               ['replace', () => {{ fs.writeFileSync({js(dist)} + '.new', 'x'); fs.renameSync({js(dist)} + '.new', {js(dist)}); }}],
                               ['chmod', () => fs.chmodSync({js(dist)}, 0o777)]]) {{
        try {{ f(); tries[name] = 'ok'; }} catch (e) {{ tries[name] = e.code; }}
      }}
      return {{ data: tries }};"""
