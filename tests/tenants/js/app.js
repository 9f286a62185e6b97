// A wasi:http component written as a web service worker: StarlingMonkey's
// fetch event, as componentize-js documents it.
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  if (url.pathname === "/echo") {
    const body = await request.text();
    return new Response(body.toUpperCase(), { headers: { "content-type": "text/plain" } });
  }
  return new Response(`hello from JavaScript, ${request.method} ${url.pathname}\n`, {
    headers: { "content-type": "text/plain" },
  });
}
