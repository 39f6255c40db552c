import { defineConfig } from "vite";

// The relay serves the built files (`herold-relay --web-root web/app/dist`)
// under a strict Content-Security-Policy: no inline script or style, so
// the build emits none.
export default defineConfig({
  build: {
    target: "es2022",
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
});
