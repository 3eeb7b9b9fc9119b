/** The dashboard's entry point (bundled to viz-dist/app.js by tools/build-viz.ts). */
import { render } from 'preact';
import { App } from './app.tsx';

render(<App />, document.getElementById('app')!);
