// matrix-js-sdk (Rust crypto, WASM) client for Sotto's E2EE interop test.
//
// Driven by tests/integration/test_e2ee_js.py through environment variables; reports
// progress on stdout as "@@<STEP> <detail>" lines (everything else there is SDK logging):
//   @@READY            joined the room with crypto running
//   @@GOT <body>       decrypted the expected message from the peer
//   @@SENT <event_id>  sent our encrypted reply
//   @@XSIGNED <ready>  bootstrapped cross-signing (keys and signatures uploaded)
// Exits 0 when done, non-zero on error or timeout.
// With SLIDING_SYNC=1 the client syncs with sliding sync (MSC4186) instead of /sync v3, as
// Element X does: its keys and to-device messages then come through the e2ee and
// to_device extensions.

import { env, runMain, say } from "./common.mjs";

async function main() {
    const sdk = await import("matrix-js-sdk");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel(process.env.JS_SDK_LOG_LEVEL || "warn");

    const roomId = env("ROOM_ID");
    const expected = env("EXPECT_BODY");
    const reply = env("REPLY_BODY");
    const client = sdk.createClient({
        baseUrl: env("HS_URL"),
        userId: env("USER_ID"),
        accessToken: env("ACCESS_TOKEN"),
        deviceId: env("DEVICE_ID"),
    });
    await client.initRustCrypto({ useIndexedDB: false });

    const got = Promise.withResolvers();
    const check = (event) => {
        if (event.getRoomId() !== roomId || event.getType() !== "m.room.message") return;
        if (!event.isEncrypted()) return;
        if (event.getContent().body === expected) got.resolve(event);
    };
    client.on(sdk.MatrixEventEvent.Decrypted, check);
    client.on(sdk.RoomEvent.Timeline, (event) => {
        if (!event.isBeingDecrypted() && !event.isDecryptionFailure()) check(event);
    });

    const synced = Promise.withResolvers();
    client.on(sdk.ClientEvent.Sync, (state) => {
        if (state === "PREPARED" || state === "SYNCING") synced.resolve();
        if (state === "ERROR") synced.reject(new Error("sync failed"));
    });
    // Short long-polls: the test server shuts down soon after we exit, and waits for open requests.
    const options = { initialSyncLimit: 20, pollTimeout: 2000 };
    if (process.env.SLIDING_SYNC === "1") {
        const { SlidingSync } = await import("matrix-js-sdk/lib/sliding-sync.js");
        const lists = new Map([
            ["all", { ranges: [[0, 50]], timeline_limit: 20, required_state: [["*", "*"]] }],
        ]);
        const roomSubscription = { timeline_limit: 20, required_state: [["*", "*"]] };
        options.slidingSync = new SlidingSync(env("HS_URL"), lists, roomSubscription, client, 2000);
    }
    await client.startClient(options);
    await synced.promise;

    await client.joinRoom(roomId);
    // Wait until the room is known locally with encryption enabled, so our reply is encrypted.
    for (let i = 0; i < 100; i++) {
        const room = client.getRoom(roomId);
        if (room && (await client.getCrypto().isEncryptionEnabledInRoom(roomId))) break;
        await new Promise((r) => setTimeout(r, 100));
    }
    say("READY");

    const event = await got.promise;
    say(`GOT ${event.getContent().body}`);

    const sent = await client.sendTextMessage(roomId, reply);
    say(`SENT ${sent.event_id}`);

    // Cross-signing as Element does it: /keys/device_signing/upload (with UIA if the server
    // asks) and /keys/signatures/upload for our own device.
    const crypto = client.getCrypto();
    await crypto.bootstrapCrossSigning({
        setupNewCrossSigning: true,
        authUploadDeviceSigningKeys: async (makeRequest) => {
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: env("USER_ID") },
                password: env("PASSWORD"),
            });
        },
    });
    say(`XSIGNED ${await crypto.isCrossSigningReady()}`);
    // Give the SDK a moment to finish outgoing requests, then stop cleanly.
    await new Promise((r) => setTimeout(r, 500));
    client.stopClient();
    process.exit(0);
}

runMain(main);
