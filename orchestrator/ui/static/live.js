// orchestrator ui: the one live connection of this browser, shared by every tab of the UI.
// A SharedWorker owns the EventSource and forwards what it says to each page's port, so ten
// open tabs hold one stream, not ten (a browser allows six connections to a host over HTTP/1.1).
"use strict";

const ports = new Set();
let open = false;
const source = new EventSource("/events");

function tell(message) {
  for (const port of ports) port.postMessage(message);
}

source.onopen = () => { open = true; tell({open}); };
source.onerror = () => { open = false; tell({open}); };
source.addEventListener("runs", (event) => tell({runs: JSON.parse(event.data)}));

// A page says "bye" when it goes away (or into the back-forward cache), "hello" when it is back.
onconnect = (event) => {
  const port = event.ports[0];
  ports.add(port);
  port.onmessage = ({data}) => {
    if (data === "bye") ports.delete(port);
    else if (data === "hello") { ports.add(port); port.postMessage({open}); }
  };
  port.postMessage({open});
};
