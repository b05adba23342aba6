"""Maps each fictional brand in data/labeled to its industry (by handle prefix).

The first authoring pass stored the *authoring batch* name in the `industry` field; this file is
the single source of the brand -> industry mapping and `python data/tools/industries.py` rewrites
the JSONL files in place (batch name kept as `batch`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BRAND_INDUSTRY: dict[str, str] = {
    "AegisHealth": "health insurance",
    "AeroVista": "airline",
    "Altura": "airline",
    "Ampere": "automotive",
    "AquaCity": "water utility",
    "AskBrightwell": "bank",
    "AskLedgerly": "bank",
    "AtlasRail": "rail",
    "Aurelia": "jewelry retail",
    "Bazaaro": "online marketplace",
    "BeaconHealth": "healthcare",
    "BeanBarn": "coffee chain",
    "BingeBox": "streaming",
    "BrickJoy": "toys",
    "Brightwell": "bank",
    "BurgerNest": "restaurant chain",
    "CableVista": "telecom",
    "CareWell": "pharmacy",
    "CircuitHub": "electronics retail",
    "ClearView": "eyewear",
    "CoinHarbor": "crypto exchange",
    "Corvo": "telecom",
    "Crumbly": "food delivery",
    "DailyLantern": "news media",
    "Dashly": "food delivery",
    "DreamCove": "mattresses",
    "FitPulse": "fitness app",
    "FizzPop": "beverages",
    "ForkBox": "meal kits",
    "FreshFold": "grocery",
    "Frostline": "home appliances",
    "Glowra": "cosmetics",
    "GoalPass": "ticketing",
    "Granville": "automotive",
    "GreenBasket": "grocery",
    "HShield": "insurance",
    "Halcyon": "hotel",
    "HarborShield": "insurance",
    "Havenly": "hotel",
    "Homiq": "smart home",
    "HopForge": "brewery",
    "HydraFlask": "consumer goods",
    "IronPeak": "fitness",
    "KelvinHome": "home appliances",
    "Kestrel": "automotive",
    "Keystone": "real estate",
    "KindrApp": "dating app",
    "Ledgerly": "bank",
    "Lexa": "university",
    "LumaBeauty": "cosmetics",
    "MaisonVellier": "luxury fashion",
    "Maribel": "hotel",
    "MediMinder": "health app",
    "MedixRx": "pharmacy",
    "Minto": "fintech",
    "Nimbusly": "software",
    "NordHaus": "furniture",
    "NorthgateUni": "university",
    "Nova": "gaming console",
    "Oceana": "cruise line",
    "Orbitel": "telecom",
    "Orla": "fashion retail",
    "PageTurn": "bookstore",
    "Packrun": "logistics",
    "PawPantry": "pet supplies",
    "PayLoop": "payments",
    "PeakC": "credit union",
    "PetGuard": "pet insurance",
    "Pinecone": "coffee chain",
    "PixelForge": "games",
    "PizzaRiot": "restaurant chain",
    "Quill": "retail",
    "RailConnect": "rail",
    "ReelHouse": "cinema",
    "RiverCityFC": "sports club",
    "Rivet": "games",
    "Routewise": "logistics",
    "RydeNow": "ride hailing",
    "ShipQuick": "logistics",
    "SkyTrek": "airline",
    "Solis": "energy",
    "SparkleClean": "cleaning services",
    "StLuke": "healthcare",
    "Strato": "cloud provider",
    "Streamlink": "internet provider",
    "Stryde": "sportswear",
    "SummitPeak": "outdoor retail",
    "SunWay": "solar energy",
    "TalentHub": "HR software",
    "Tandem": "bike sharing",
    "Telvana": "telecom",
    "TinyNest": "baby products",
    "TixNova": "ticketing",
    "TripNest": "travel agency",
    "Umbra": "insurance",
    "UrbanKey": "real estate",
    "VeloCraft": "bicycles",
    "Voltara": "energy",
    "Voltix": "electric scooters",
    "WhiskerWell": "pet care",
    "WonderCove": "theme parks",
    "Zest": "beverages",
    "ZipRent": "car rental",
    "ZoomScoot": "scooter sharing",
}


def industry_of(handle: str) -> str:
    name = handle.lstrip("@")
    matches = [brand for brand in BRAND_INDUSTRY if name.startswith(brand)]
    if not matches:
        raise KeyError(f"no industry for handle {handle}")
    return BRAND_INDUSTRY[max(matches, key=len)]


def rewrite(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if "batch" not in row:
            row["batch"] = row.pop("industry", None)
        row["industry"] = industry_of(row["handle"])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    for arg in sys.argv[1:] or [str(p) for p in Path("data/labeled").glob("*.jsonl")]:
        rewrite(Path(arg))
