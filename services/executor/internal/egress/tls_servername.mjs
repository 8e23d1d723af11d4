// sandpit: imported first (node --import) in every sandbox that has egress.
//
// Node sends the trailing dot of "https://api.example.com./" in the TLS
// server name (SNI). RFC 6066 forbids it, and the egress proxy's TLS server
// (Go's crypto/tls) cannot parse such a ClientHello at all, so the request
// would fail at the handshake. Like curl and browsers, drop the dot from the
// server name only: the Host header keeps it, and the proxy decides the
// request as the canonical name. Certificate checks already ignore the dot.
//
// tls is loaded on first use, not here (loading it costs a program that
// never connects about a quarter of node's start): the patch is applied
// when tls, https or http2 is required or imported, or fetch / WebSocket
// (undici) is about to connect.
const builtin = process.getBuiltinModule;
let patched = false;
function patch() {
  if (patched) return;
  patched = true;
  const tls = builtin("node:tls");
  const set = tls.TLSSocket.prototype.setServername;
  tls.TLSSocket.prototype.setServername = function setServername(name) {
    return set.call(this, typeof name === "string" && name.endsWith(".") ? name.slice(0, -1) : name);
  };
}
const usesTLS = /^(node:)?(tls|https|http2|_tls_wrap)$/;
if (typeof builtin === "function") {
  const { registerHooks } = builtin("node:module");
  if (typeof registerHooks === "function") {
    registerHooks({
      resolve(specifier, context, next) {
        if (!patched && usesTLS.test(specifier)) patch();
        return next(specifier, context);
      },
    });
  }
  process.getBuiltinModule = function (id) {
    if (!patched && usesTLS.test(id)) patch();
    return builtin.apply(this, arguments);
  };
  builtin("node:diagnostics_channel").subscribe("undici:client:beforeConnect", patch);
}
