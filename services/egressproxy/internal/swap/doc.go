// Package swap finds credential placeholders in a sandbox's request, swaps
// them for their secrets' values, and scrubs the values out of the response.
//
// A placeholder's id is "SPX" and 29 ASCII letters or digits; Find reports
// every id it sees without knowing any execution's placeholders. It scans
// header values, the decoded credentials of Authorization and
// Proxy-Authorization "Basic", header names, the query (keys and values,
// raw when undecodable, else percent-decoded) and the path (raw and
// percent-decoded). Where no binding can place a secret (a header name, a
// query key, the path) an id is reported as PATH.
//
// Not scanned: request bodies, and any other encoding of a placeholder
// (base64 outside Basic, double percent-encoding, JSON escapes...). Such a
// placeholder is not swapped and goes upstream as it is, worth nothing.
// Apply swaps only in header values, Basic credentials and query values,
// never in the path or a header name.
//
// Scrubbing replaces a value only where it occurs verbatim: a value an
// upstream reflects transformed (base64, hex, cut, split across header
// values) is not scrubbed.
package swap
