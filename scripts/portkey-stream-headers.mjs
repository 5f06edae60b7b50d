// Preloaded into Portkey's gateway by scripts/bench.sh (`node --import`), so that its streams can
// be measured at all. As shipped, @portkey-ai/gateway 1.15.2 answers every streamed request 500
// "Something went wrong" (its log: `TypeError: immutable`): it wraps the upstream's streamed
// response as `new Response(stream, upstream)`, and @hono/node-server's Response then hands back
// the upstream fetch response's own Headers, which fetch made immutable; Portkey appends its
// `x-portkey-*` headers to them and throws. Here an event-stream response from fetch is re-made
// with a mutable copy of its headers (the same status, headers and body stream). Any other
// response passes through untouched: measured in one run, Portkey with and without this file
// served 1,790 and 1,828 non-stream requests per second at 0.673 and 0.677 ms CPU each
// (bench/RESULTS.md, 2026-12-05).
const NativeResponse = globalThis.Response;
const nativeFetch = globalThis.fetch;

globalThis.fetch = async function fetchWithMutableStreamHeaders(...args) {
  const response = await nativeFetch.apply(this, args);
  const type = response.headers.get("content-type");
  if (type === null || !type.startsWith("text/event-stream")) {
    return response;
  }
  return new NativeResponse(response.body, {
    status: response.status,
    statusText: response.statusText,
    headers: new Headers(response.headers),
  });
};
