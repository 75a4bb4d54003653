// The protocol between a client script and the pytest side: a JSON snapshot line on stdout
// whenever the state changes (at most every 50 ms), and on "dump" read from stdin one final line
// with everything, then exit.
import { createInterface } from "node:readline";

export function report(getState, summarize, finish) {
  let last = "";
  const tick = setInterval(async () => {
    const line = JSON.stringify({ t: "snapshot", ...summarize(await getState()) });
    if (line !== last) {
      last = line;
      process.stdout.write(line + "\n");
    }
  }, 50);
  createInterface({ input: process.stdin }).on("line", async (line) => {
    if (line.trim() !== "dump") return;
    clearInterval(tick);
    const state = await getState();
    await finish();
    // A pipe is written asynchronously: exit only once the line is out.
    process.stdout.write(JSON.stringify({ t: "final", ...state }) + "\n", () => process.exit(0));
  });
}
