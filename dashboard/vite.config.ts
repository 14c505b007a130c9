import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vitest/config';

export default defineConfig({
	plugins: [sveltekit()],
	server: {
		// `npm run dev` against a local `picloud up` (PICLOUD_URL to change it).
		proxy: {
			'/api': process.env.PICLOUD_URL ?? 'http://127.0.0.1:8080',
			'/fn': process.env.PICLOUD_URL ?? 'http://127.0.0.1:8080'
		}
	},
	test: { include: ['src/**/*.test.ts'] }
});
