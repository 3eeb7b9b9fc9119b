// The last line of .ci/run: "N passed, N failed, N skipped" from vitest's JSON report, counting a failed type check
// and a test runner that failed without a failed test (it crashed, or a suite did not load) as failures. Exits 1
// unless something passed and nothing failed. Usage: node .ci/summary.mjs REPORT.json TYPECHECK_FAILED TEST_RC
import { readFileSync } from 'node:fs';

const [reportPath, typecheckFailed, testRc] = process.argv.slice(2);
let report = {};
try {
  report = JSON.parse(readFileSync(reportPath, 'utf8'));
} catch (err) {
  console.log(`no test report (${err.code ?? err.message})`);
}
const passed = report.numPassedTests ?? 0;
let failed = report.numFailedTests ?? 0;
const skipped = (report.numPendingTests ?? 0) + (report.numTodoTests ?? 0);
if (typecheckFailed !== '0') {
  failed++;
  console.log('type check failed');
}
if (testRc !== '0' && failed === 0) {
  failed = 1;
  console.log(`the test runner failed (exit ${testRc})`);
}
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
process.exitCode = failed === 0 && passed > 0 ? 0 : 1;
