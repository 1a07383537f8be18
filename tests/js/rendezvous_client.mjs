// matrix-js-sdk's MSC4108 rendezvous transport against Sotto, for
// tests/integration/test_rendezvous.py: two parties (the device showing a QR code and the one
// scanning it) exchange messages through one session; the SDK finds the endpoint through
// /versions. Reports "@@RESULT <json>".

import { env, runMain, say } from "./common.mjs";

async function main() {
    const sdk = await import("matrix-js-sdk");
    const { logger } = await import("matrix-js-sdk/lib/logger.js");
    logger.setLevel("warn");
    const { MSC4108RendezvousSession } = await import("matrix-js-sdk/lib/rendezvous/index.js");
    const client = sdk.createClient({ baseUrl: env("HS_URL") });
    const failures = [];
    const onFailure = (reason) => failures.push(reason);

    const shower = new MSC4108RendezvousSession({ client, onFailure });
    await shower.send("ping from the device showing the code");
    const scanner = new MSC4108RendezvousSession({ url: shower.url, onFailure });
    const received = [await scanner.receive()];
    await scanner.send("pong from the scanning device");
    received.push(await shower.receive());
    await shower.send("done");
    received.push(await scanner.receive());
    const url = shower.url;
    await shower.close();
    const closed = (await fetch(url)).status;
    if (failures.length) throw new Error(`failures: ${failures}`);
    say(`RESULT ${JSON.stringify({ url, received, closed })}`);
}

runMain(main);
