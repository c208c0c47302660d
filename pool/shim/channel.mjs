// The protocol channel: newline-delimited JSON over fd 3 (a Unix socketpair end), both ways.
//
// Why fd 3 and not stdout: adaptors print to stdout/stderr directly; those streams belong to
// the job's log (PROTOCOL.md). Frames are written in order through one socket, so events keep
// the order in which the shim emitted them.
import net from 'node:net';

/**
 * Open the channel on `fd`. `onMessage(obj)` gets each parsed frame; `onClose()` runs at EOF
 * (the executor is gone). Returns `{ send(obj), flush(): Promise<void> }`.
 */
export function openChannel(fd, onMessage, onClose) {
  const socket = new net.Socket({ fd, readable: true, writable: true });
  socket.setEncoding('utf8');
  let buffer = '';
  socket.on('data', (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (!line.trim()) continue;
      let message;
      try {
        message = JSON.parse(line);
      } catch (e) {
        process.stderr.write(`shim: ignoring a frame that is not JSON: ${e.message}\n`);
        continue;
      }
      onMessage(message);
    }
  });
  socket.on('end', onClose);
  socket.on('close', onClose);
  socket.on('error', (e) => {
    process.stderr.write(`shim: protocol channel error: ${e.message}\n`);
    onClose();
  });
  return {
    send(message) {
      socket.write(JSON.stringify(message) + '\n');
    },
    flush() {
      return new Promise((resolve) => socket.write('', () => resolve()));
    },
  };
}
