import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** @type {import('@sveltejs/kit').Config} */
export default {
	preprocess: vitePreprocess(),
	kit: {
		// A single-page app: every /dashboard/* URL gets index.html, the
		// server (manager role, `picloud up`) falls back to it.
		adapter: adapter({ fallback: 'index.html', precompress: true, strict: false }),
		paths: { base: '/dashboard', relative: false },
		// No preloading of every route's code: the editor loads lazily.
		output: { bundleStrategy: 'split' }
	}
};
