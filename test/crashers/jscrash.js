// jscrash: a Node.js program that aborts from a JavaScript function
// (process.abort()), as a failed native check does.
function parseHeader(s) {
  if (s.length > 2) process.abort();
  return s;
}
function main() { parseHeader(process.argv[2] || "abcdef"); }
main();
