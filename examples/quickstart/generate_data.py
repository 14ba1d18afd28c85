"""Deterministic synthetic data for the contextkit e-commerce support-assistant quickstart.

The generator writes four Parquet files that together describe a small online shop:

``orders.parquet``
    One row per order: ``order_id`` (int64, unique, increasing with time), ``user_id``,
    ``product_id`` (int64), ``amount`` (float64, cents, ~ price * quantity minus an occasional
    discount), ``quantity`` (int64, 1..5), ``status`` (``completed`` / ``refunded`` /
    ``cancelled``) and ``ts``. Orders span the 90 days before ``end`` and get denser towards
    ``end`` so that 1h, 1d, 7d and 30d windows are all populated. Users differ a lot in
    activity (log-normal weights, boosted by tier); about 15% of users are "churned" and have
    no orders in the last 30 days, and about 5% are big spenders who mostly buy premium products.
    Rows are sorted by ``ts``.
``products.parquet``
    ``product_id``, ``name``, ``category`` (10 categories), ``brand``, ``price``,
    ``description`` (60-150 words built from category-specific vocabulary so that semantic
    search behaves sensibly), ``sku`` (unique rare code ``SKU-ABC-1234``, quoted once inside the
    description, handy for testing exact/keyword vs. semantic retrieval) and ``updated_at``.
``users.parquet``
    ``user_id``, ``name``, ``tier`` (``free`` / ``plus`` / ``pro``), ``country`` (ISO 3166
    alpha-2) and ``signup_ts`` (always before the user's first order).
``support_articles.parquet``
    ``article_id``, ``title``, ``body`` (80-200 words on returns, refunds, shipping, warranty,
    account or payment policies), ``category`` (a product category or ``general``) and
    ``updated_at``. Policy facts (return windows, warranty lengths, ...) are consistent per
    category across articles.

Every timestamp column is ``timestamp('us', tz='UTC')`` and lies strictly before ``end``.
The output depends only on the arguments: the same seed and the same ``end`` give byte-identical
files. Each table draws from its own random stream, so e.g. changing ``--orders`` leaves
``products.parquet`` and ``support_articles.parquet`` unchanged.

Usage::

    python generate_data.py --out data/ [--users 1000] [--products 2000] [--orders 50000]
                            [--articles 200] [--seed 7] [--end 2024-06-01T12:00:00Z]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["CATEGORIES", "generate", "main"]

TS_TYPE = pa.timestamp("us", tz="UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US_PER_SECOND = 1_000_000
US_PER_HOUR = 3_600 * US_PER_SECOND
US_PER_DAY = 24 * US_PER_HOUR

ORDER_HISTORY_DAYS = 90
CHURN_DAYS = 30
CHURNED_USER_SHARE = 0.15
WHALE_USER_SHARE = 0.05

CATEGORIES: tuple[str, ...] = (
    "shoes",
    "electronics",
    "kitchen",
    "books",
    "outdoor",
    "toys",
    "beauty",
    "garden",
    "sports",
    "office",
)

# Median list price per category; actual prices are log-normal around it.
CATEGORY_MEDIAN_PRICE: dict[str, float] = {
    "shoes": 85.0,
    "electronics": 160.0,
    "kitchen": 45.0,
    "books": 18.0,
    "outdoor": 95.0,
    "toys": 30.0,
    "beauty": 24.0,
    "garden": 40.0,
    "sports": 55.0,
    "office": 22.0,
}

MODEL_NAMES: tuple[str, ...] = (
    "Ridge", "Summit", "Aero", "Pulse", "Nova", "Terra", "Flux", "Vista",
    "Echo", "Apex", "Drift", "Orbit", "Crest", "Pioneer", "Zen", "Atlas",
    "Harbor", "Ember", "Cascade", "Metro",
)  # fmt: skip

# Category vocabulary used to compose product names and descriptions.
# fmt: off
VOCAB: dict[str, dict[str, list[str]]] = {
    "shoes": {
        "brands": ["Stridewell", "Northpeak", "Urban Sole", "Trailfox", "Kinetic"],
        "nouns": [
            "running shoes", "hiking boots", "trail runners", "leather loafers",
            "canvas sneakers", "winter boots", "walking sandals", "work boots",
            "slip-on shoes", "court sneakers",
        ],
        "adjectives": [
            "lightweight", "cushioned", "breathable", "waterproof", "slip-resistant",
            "classic", "all-day", "supportive",
        ],
        "features": [
            "a cushioned midsole that absorbs impact on hard pavement",
            "a grippy rubber outsole with deep lugs for loose terrain",
            "a waterproof, breathable membrane that keeps feet dry in rain and puddles",
            "a padded collar and tongue",
            "a reinforced toe cap",
            "a removable insole that works with custom orthotics",
            "a heel counter that locks the foot in place",
            "reflective details for low-light visibility",
        ],
        "materials": [
            "full-grain leather", "recycled mesh", "suede and ripstop nylon",
            "vegan leather", "a seamless knit upper", "waxed canvas",
        ],
        "benefits": [
            "stays comfortable from the first step to the last",
            "needs almost no break-in time",
            "keeps its shape after months of daily wear",
            "dries quickly after a wet walk",
        ],
        "uses": [
            "long walks around the city", "hiking muddy trails", "daily running",
            "standing all day at work", "rainy commutes", "casual weekends",
            "fast hiking and backpacking",
        ],
        "audience": ["runners", "hikers", "commuters", "nurses and retail staff", "walkers"],
        "extras": [
            "Sizes run true to size; if you are between sizes we recommend going half a size up.",
            "The outsole pattern is tuned for both wet rock and city sidewalks.",
            "Wipe clean with a damp cloth and let the shoes air dry away from direct heat.",
        ],
    },
    "electronics": {
        "brands": ["Voltera", "Lumina", "Sonique", "ByteForge", "Arcwave"],
        "nouns": [
            "wireless headphones", "bluetooth speaker", "smartwatch", "portable charger",
            "mechanical keyboard", "4K webcam", "noise-cancelling earbuds", "tablet stand",
            "USB-C hub", "e-reader",
        ],
        "adjectives": [
            "compact", "wireless", "fast-charging", "high-fidelity", "smart",
            "rechargeable", "low-latency", "portable",
        ],
        "features": [
            "active noise cancellation",
            "up to 30 hours of battery life",
            "USB-C fast charging",
            "bluetooth 5.3 with multipoint pairing",
            "a companion app with firmware updates",
            "an IPX5 splash-resistant housing",
            "a built-in microphone with echo reduction",
            "a bright, glare-free display",
        ],
        "materials": [
            "anodized aluminium", "impact-resistant polycarbonate", "soft-touch silicone",
            "tempered glass", "recycled plastics",
        ],
        "benefits": [
            "delivers clear sound and stable connections",
            "charges to 50% in about fifteen minutes",
            "pairs instantly with phones, tablets and laptops",
            "keeps working through a full day of meetings",
        ],
        "uses": [
            "video calls from home", "travel and commuting", "gaming sessions",
            "workouts at the gym", "streaming music", "reading on the go",
        ],
        "audience": ["remote workers", "gamers", "students", "frequent travellers", "musicians"],
        "extras": [
            "The box includes a USB-C cable and a quick-start guide.",
            "Firmware updates are delivered over the air through the companion app.",
            "It is compatible with iOS, Android, Windows and macOS devices.",
        ],
    },
    "kitchen": {
        "brands": ["Copperleaf", "Hearth & Co", "Chefline", "Brightpan", "Ovenly"],
        "nouns": [
            "non-stick frying pan", "chef's knife", "cast iron skillet", "stand mixer",
            "electric kettle", "knife block set", "dutch oven", "blender",
            "coffee grinder", "baking sheet set",
        ],
        "adjectives": [
            "professional", "non-stick", "dishwasher-safe", "heavy-duty", "induction-ready",
            "ergonomic", "stainless", "versatile",
        ],
        "features": [
            "a PFOA-free non-stick coating",
            "an induction-compatible base",
            "a stay-cool ergonomic handle",
            "precise temperature control",
            "a razor-sharp forged blade",
            "oven-safe construction up to 260 degrees Celsius",
            "a tight-fitting tempered glass lid",
            "dishwasher-safe parts",
        ],
        "materials": [
            "tri-ply stainless steel", "enamelled cast iron", "high-carbon German steel",
            "BPA-free Tritan", "hard-anodized aluminium",
        ],
        "benefits": [
            "heats evenly without hot spots",
            "cleans up in seconds",
            "handles everyday cooking and weekend baking alike",
            "holds an edge for months between sharpenings",
        ],
        "uses": [
            "searing steaks", "weeknight family dinners", "baking bread",
            "meal prep on Sundays", "brewing morning coffee", "making smoothies",
        ],
        "audience": ["home cooks", "bakers", "busy families", "coffee lovers", "aspiring chefs"],
        "extras": [
            "Hand washing is recommended to keep the finish looking new.",
            "Works on gas, electric, ceramic and induction hobs.",
            "A printed recipe card with three starter recipes is included.",
        ],
    },
    "books": {
        "brands": ["Lantern Press", "Quillhouse", "Meridian Books", "Paperkite", "Atlas Editions"],
        "nouns": [
            "hardcover cookbook", "paperback thriller", "hiking field guide",
            "illustrated children's book", "programming handbook", "historical novel",
            "gardening guide", "science fiction anthology", "travel guide", "poetry collection",
        ],
        "adjectives": [
            "bestselling", "award-winning", "illustrated", "beginner-friendly", "gripping",
            "updated", "practical", "beautifully bound",
        ],
        "features": [
            "full-colour photographs on every spread",
            "a detailed index and glossary",
            "step-by-step worked examples",
            "maps of popular trails and routes",
            "a foreword by a well-known author",
            "discussion questions for book clubs",
            "large, easy-to-read type",
            "QR codes linking to bonus online material",
        ],
        "materials": [
            "acid-free paper", "a sewn, lay-flat binding", "a cloth-bound hardcover",
            "recycled paper stock", "a matte laminated cover",
        ],
        "benefits": [
            "is easy to read in short sessions",
            "makes a thoughtful gift",
            "stays open on the kitchen counter or the desk",
            "rewards a second read",
        ],
        "uses": [
            "evening reading", "learning a new skill", "planning a trip",
            "reading aloud at bedtime", "book club discussions", "studying for exams",
        ],
        "audience": ["readers", "students", "parents", "hobbyists", "book clubs"],
        "extras": [
            "This edition has been revised and includes two new chapters.",
            "The ebook edition is sold separately.",
            "Recommended for readers aged twelve and up unless stated otherwise.",
        ],
    },
    "outdoor": {
        "brands": ["Northpeak", "Summit Forge", "Wildtrail", "Basecamp Co", "Alpenglow"],
        "nouns": [
            "hiking backpack", "two-person tent", "down sleeping bag", "rain jacket",
            "trekking poles", "camping stove", "headlamp", "waterproof hiking boots",
            "insulated water bottle", "dry bag",
        ],
        "adjectives": [
            "waterproof", "ultralight", "windproof", "packable", "insulated", "rugged",
            "weatherproof", "four-season",
        ],
        "features": [
            "fully taped waterproof seams",
            "a breathable waterproof membrane rated to 20,000 mm",
            "an adjustable, ventilated back panel",
            "quick-release buckles that work with gloves",
            "a storm hood and water-resistant zips",
            "a packable design that fits in its own pocket",
            "reflective guy lines and aluminium stakes",
            "a lumen-boost mode for night hikes",
        ],
        "materials": [
            "ripstop nylon", "recycled polyester with a PFC-free DWR finish",
            "responsibly sourced down", "aircraft-grade aluminium", "double-wall stainless steel",
        ],
        "benefits": [
            "keeps you dry when the weather turns",
            "barely registers in a loaded pack",
            "sets up in minutes even in the wind",
            "shrugs off rain, mud and rough rock",
        ],
        "uses": [
            "multi-day hiking trips", "camping in wet weather", "alpine scrambles",
            "backpacking", "trail running in the rain", "weekend camping with kids",
        ],
        "audience": ["hikers", "campers", "backpackers", "mountaineers", "families outdoors"],
        "extras": [
            "Reproof the outer fabric once a season to keep it beading water.",
            "Packs down small enough to clip onto the outside of a daypack.",
            "Tested in the field by our guides through a full season of rain and snow.",
        ],
    },
    "toys": {
        "brands": ["Brickle", "Tinkertoy Lab", "Happy Orbit", "Wonderbox", "Playnest"],
        "nouns": [
            "building block set", "remote control car", "wooden puzzle", "plush bear",
            "science experiment kit", "board game", "dollhouse", "marble run",
            "coding robot", "art and craft kit",
        ],
        "adjectives": [
            "educational", "colourful", "interactive", "award-winning", "creative",
            "sturdy", "screen-free", "family-friendly",
        ],
        "features": [
            "over 300 pieces that snap together securely",
            "rounded edges and child-safe paints",
            "a rechargeable battery with a USB cable",
            "illustrated step-by-step instructions",
            "a storage box that doubles as a play mat",
            "three difficulty levels that grow with your child",
            "glow-in-the-dark elements",
            "compatibility with other popular brick systems",
        ],
        "materials": [
            "FSC-certified beech wood", "non-toxic ABS plastic", "soft recycled plush",
            "water-based paints", "sturdy cardboard and linen-finish cards",
        ],
        "benefits": [
            "builds fine motor skills and problem solving",
            "keeps kids busy for hours without a screen",
            "survives plenty of rough play",
            "makes game night fun for the whole family",
        ],
        "uses": [
            "rainy afternoons", "birthday gifts", "classroom activities",
            "family game night", "learning STEM basics", "quiet time",
        ],
        "audience": ["kids aged 6 and up", "toddlers", "families", "teachers", "young engineers"],
        "extras": [
            "Contains small parts and is not suitable for children under three.",
            "Batteries are included where required.",
            "Meets EN71 and ASTM toy safety standards.",
        ],
    },
    "beauty": {
        "brands": ["Dewdrop", "Lumiere Skin", "Velvet Botanica", "PureGlow", "Nordic Bloom"],
        "nouns": [
            "hydrating face serum", "mineral sunscreen", "night cream", "vitamin C serum",
            "gentle cleanser", "hair repair mask", "lip balm set", "eye cream",
            "body lotion", "clay face mask",
        ],
        "adjectives": [
            "fragrance-free", "vegan", "dermatologist-tested", "lightweight", "nourishing",
            "soothing", "cruelty-free", "non-comedogenic",
        ],
        "features": [
            "hyaluronic acid for lasting hydration",
            "broad-spectrum SPF 50 protection",
            "a stabilised vitamin C complex",
            "ceramides that support the skin barrier",
            "a fast-absorbing, non-greasy texture",
            "an airless pump that keeps the formula fresh",
            "soothing aloe and chamomile extracts",
            "no parabens, sulfates or added fragrance",
        ],
        "materials": [
            "plant-based ingredients", "recyclable glass packaging", "organic shea butter",
            "cold-pressed botanical oils", "mineral zinc oxide",
        ],
        "benefits": [
            "leaves skin soft without a greasy film",
            "is gentle enough for sensitive skin",
            "layers well under makeup",
            "visibly evens skin tone with regular use",
        ],
        "uses": [
            "morning skincare routines", "dry winter skin", "sunny beach days",
            "overnight repair", "post-workout refresh", "travel kits",
        ],
        "audience": ["sensitive skin", "all skin types", "dry skin", "oily skin", "busy mornings"],
        "extras": [
            "Patch test before first use and discontinue if irritation occurs.",
            "Opened products keep for twelve months; store below 25 degrees Celsius.",
            "Not tested on animals at any stage of development.",
        ],
    },
    "garden": {
        "brands": ["Greenhand", "Rootwell", "Bloomfield Tools", "Terracraft", "Meadowline"],
        "nouns": [
            "pruning shears", "garden hose", "raised garden bed", "cordless lawn mower",
            "watering can", "compost bin", "seed starter kit", "garden kneeler",
            "solar path lights", "hedge trimmer",
        ],
        "adjectives": [
            "rust-resistant", "cordless", "heavy-duty", "weatherproof", "ergonomic",
            "expandable", "eco-friendly", "lightweight",
        ],
        "features": [
            "hardened steel blades that cut cleanly",
            "a kink-free, expandable design",
            "a long-life lithium battery",
            "UV-stabilised materials that will not crack in the sun",
            "a comfortable cushioned grip",
            "a self-watering reservoir",
            "a quick-connect hose fitting",
            "an automatic dusk-to-dawn sensor",
        ],
        "materials": [
            "powder-coated steel", "cedar wood", "recycled HDPE plastic",
            "carbon steel with a non-stick coating", "natural rubber",
        ],
        "benefits": [
            "makes weekend yard work quicker",
            "withstands years of sun, frost and rain",
            "is easy on the hands and back",
            "helps vegetables and flowers thrive",
        ],
        "uses": [
            "spring planting", "growing vegetables", "lawn care", "pruning roses",
            "balcony gardens", "composting kitchen scraps",
        ],
        "audience": [
            "gardeners", "homeowners", "allotment growers", "beginners", "balcony growers",
        ],
        "extras": [
            "Drain and store indoors over winter to extend its life.",
            "Spare blades and parts are available separately.",
            "Assembly takes about twenty minutes with the included tools.",
        ],
    },
    "sports": {
        "brands": ["ProPace", "Iron Arc", "Velocity", "CourtKing", "FlexCore"],
        "nouns": [
            "yoga mat", "adjustable dumbbells", "tennis racket", "resistance band set",
            "football", "cycling helmet", "jump rope", "foam roller", "gym bag",
            "basketball",
        ],
        "adjectives": [
            "non-slip", "adjustable", "competition-grade", "durable", "lightweight",
            "sweat-resistant", "high-density", "portable",
        ],
        "features": [
            "a non-slip textured surface",
            "quick-change weight adjustment from 2 to 24 kg",
            "a ventilated, impact-absorbing shell",
            "colour-coded resistance levels",
            "a moisture-wicking lining",
            "a shoe compartment and water bottle pocket",
            "an aerodynamic frame with a balanced sweet spot",
            "a free training plan in the app",
        ],
        "materials": [
            "natural tree rubber", "high-density EVA foam", "graphite composite",
            "latex-free TPE", "water-resistant polyester",
        ],
        "benefits": [
            "helps you train harder and recover faster",
            "stays put during intense sessions",
            "packs away easily in a small flat",
            "holds up to daily training",
        ],
        "uses": [
            "home workouts", "yoga and pilates", "weekend matches", "commuting by bike",
            "strength training", "team practice",
        ],
        "audience": ["athletes", "beginners", "yoga lovers", "cyclists", "coaches"],
        "extras": [
            "Meets the official size and weight standards for league play.",
            "Clean with mild soap and water after sweaty sessions.",
            "A printed exercise guide is included in the box.",
        ],
    },
    "office": {
        "brands": ["Deskcraft", "Inkwell", "Paperline", "Ergonomix", "Clipwise"],
        "nouns": [
            "ergonomic office chair", "standing desk converter", "gel pen set",
            "dotted notebook", "monitor arm", "desk organiser", "label maker",
            "whiteboard", "laptop stand", "document shredder",
        ],
        "adjectives": [
            "ergonomic", "height-adjustable", "refillable", "minimalist", "space-saving",
            "quiet", "premium", "durable",
        ],
        "features": [
            "adjustable lumbar support",
            "smooth gas-spring height adjustment",
            "quick-drying, smudge-proof ink",
            "120 gsm bleed-resistant paper",
            "built-in cable management",
            "a micro-cut security level of P-4",
            "a magnetic, dry-erase surface",
            "tool-free assembly in under ten minutes",
        ],
        "materials": [
            "breathable mesh", "solid bamboo", "recycled aluminium", "FSC-certified paper",
            "powder-coated steel",
        ],
        "benefits": [
            "keeps your posture healthy through long work days",
            "frees up valuable desk space",
            "makes planning and note taking a pleasure",
            "keeps paperwork neat and secure",
        ],
        "uses": [
            "working from home", "journaling", "organising a small office",
            "long study sessions", "planning projects", "shared office spaces",
        ],
        "audience": ["remote workers", "students", "small businesses", "planners", "designers"],
        "extras": [
            "Backed by a five-year frame warranty for office furniture.",
            "Refills are sold separately in packs of ten.",
            "Fits desks from 60 to 120 centimetres deep.",
        ],
    },
}
# fmt: on

GENERIC_EXTRAS: tuple[str, ...] = (
    "Customers often pair it with other {category} essentials from {brand}.",
    "Every unit is inspected by our quality team before it leaves the warehouse.",
    "It ships in plastic-free, recyclable packaging.",
    "Reviewers consistently mention the great value for money at this price point.",
    "{brand} has been making {category} products for more than a decade.",
    "Free standard delivery applies to this item on orders over the usual threshold.",
)

# Support policies per product category; articles quote these consistently.
POLICIES: dict[str, dict[str, str]] = {
    "shoes": {"return_days": "60", "warranty": "6-month", "ship_days": "3-5",
              "condition": "shoes must be unworn outdoors and returned in the original box",
              "label": "shoes and boots"},
    "electronics": {"return_days": "15", "warranty": "2-year", "ship_days": "2-4",
                    "condition": "devices must be factory reset and include all accessories",
                    "label": "electronics and gadgets"},
    "kitchen": {"return_days": "30", "warranty": "2-year", "ship_days": "3-6",
                "condition": "cookware must be unused and knives returned in their guards",
                "label": "kitchen and cookware"},
    "books": {"return_days": "14", "warranty": "90-day", "ship_days": "2-3",
              "condition": "books must be in resaleable condition without writing or damage",
              "label": "books"},
    "outdoor": {"return_days": "45", "warranty": "1-year", "ship_days": "3-5",
                "condition": "tents and sleeping bags must be clean, dry and fully packed",
                "label": "outdoor and camping gear"},
    "toys": {"return_days": "30", "warranty": "6-month", "ship_days": "3-5",
             "condition": "sealed toys and games must be returned unopened",
             "label": "toys and games"},
    "beauty": {"return_days": "14", "warranty": "30-day", "ship_days": "2-4",
               "condition": "for hygiene reasons only unopened, sealed products can be returned",
               "label": "beauty and skincare"},
    "garden": {"return_days": "30", "warranty": "3-year", "ship_days": "4-7",
               "condition": "tools must be clean and free of soil, plants cannot be returned",
               "label": "garden tools and supplies"},
    "sports": {"return_days": "30", "warranty": "1-year", "ship_days": "3-5",
               "condition": "equipment must be unused with tags attached",
               "label": "sports and fitness equipment"},
    "office": {"return_days": "30", "warranty": "5-year", "ship_days": "3-6",
               "condition": "furniture must be returned disassembled in its original packaging",
               "label": "office supplies and furniture"},
}  # fmt: skip

CATEGORY_TOPICS: tuple[str, ...] = ("returns", "refunds", "shipping", "warranty")
GENERAL_TOPICS: tuple[str, ...] = ("account", "payment")

TITLE_TEMPLATES: dict[str, list[str]] = {
    "returns": [
        "Returns policy for {label}",
        "How to return {label}",
        "Returning {label}: windows, conditions and labels",
    ],
    "refunds": [
        "Refunds for {label}",
        "When will I get my refund for {label}?",
        "Refund timelines and exceptions for {label}",
    ],
    "shipping": [
        "Shipping and delivery for {label}",
        "Where is my order? Tracking {label} deliveries",
        "Delivery times and costs for {label}",
    ],
    "warranty": [
        "Warranty coverage for {label}",
        "Making a warranty claim on {label}",
        "What the warranty covers for {label}",
    ],
    "account": [
        "Managing your account",
        "Resetting your password and securing your account",
        "Changing your email, address or membership tier",
        "Closing your account and exporting your data",
    ],
    "payment": [
        "Payment methods we accept",
        "Why was my payment declined?",
        "Invoices, receipts and VAT",
        "Buy now, pay later and instalment plans",
    ],
}

ARTICLE_SENTENCES: dict[str, list[str]] = {
    "returns": [
        "You can return {label} within {return_days} days of delivery for a full refund.",
        "To be eligible, {condition}.",
        "Start a return from the Orders page in your account and choose the item and reason.",
        "We email a prepaid return label within a few minutes; print it or show the QR code "
        "at any drop-off point.",
        "Returns are free for plus and pro members; free-tier customers pay a flat return "
        "shipping fee of 4.95.",
        "Items damaged on arrival can be returned at any time within the first {return_days} "
        "days at no cost; please attach a photo of the damage.",
        "If you received the wrong item, we will send the correct one before you send "
        "anything back.",
        "Gift returns are refunded as store credit to the person who returns the item.",
        "Once the parcel is scanned by the carrier, the return status in your order history "
        "changes to in transit.",
        "Items returned after {return_days} days or not meeting the conditions will be sent "
        "back to you.",
    ],
    "refunds": [
        "Refunds for {label} are issued once the returned item passes inspection at our warehouse.",
        "Inspection usually takes two business days after the parcel arrives.",
        "The refund goes back to the original payment method; card refunds take 3-5 business "
        "days to appear, PayPal refunds usually arrive within 24 hours.",
        "If you paid with store credit or a gift card, the refund is added to your balance "
        "immediately.",
        "Original shipping fees are refunded only when the item was faulty or we made a mistake.",
        "Cancelled orders that have not shipped are refunded automatically within one hour.",
        "Partial refunds may apply if the return conditions are not met: {condition}.",
        "You will receive an email as soon as your refund has been processed, and the order "
        "status changes to refunded.",
        "If a refund has not arrived after ten business days, contact support with your "
        "order number.",
        "Price adjustments are available if the price of an item drops within 7 days of "
        "your purchase.",
    ],
    "shipping": [
        "Standard delivery for {label} takes {ship_days} business days.",
        "Express delivery arrives in 1-2 business days and costs 9.95.",
        "Standard delivery is free on orders over 50, and always free for pro members.",
        "Orders placed before 2 pm UTC on a business day are dispatched the same day.",
        "You will receive a tracking link by email as soon as your parcel leaves the warehouse.",
        "Bulky items may be delivered by a freight partner who will call to arrange a "
        "delivery slot.",
        "We currently ship to more than 30 countries; customs duties for deliveries outside "
        "the EU, UK and US are paid by the recipient.",
        "If tracking has not updated for five business days, we will open an investigation "
        "with the carrier.",
        "Items from one order may arrive in separate parcels when they ship from different "
        "warehouses.",
        "You can change the delivery address until the order status changes to shipped.",
    ],
    "warranty": [
        "All {label} come with a {warranty} manufacturer warranty from the delivery date.",
        "The warranty covers defects in materials and workmanship under normal use.",
        "It does not cover accidental damage, normal wear and tear, or misuse.",
        "To make a claim, open the order in your account, select Report a problem and "
        "describe the fault with photos or a short video.",
        "Approved claims are resolved by repair, replacement or refund at our discretion.",
        "Pro members get an extra 12 months of extended warranty on every purchase.",
        "Keep your order confirmation email as proof of purchase.",
        "Replacement parts can often be shipped for free so you do not need to send back "
        "the whole product.",
        "Claims are usually reviewed within three business days.",
        "This warranty is in addition to, and does not affect, your statutory consumer rights.",
    ],
    "account": [
        "You can update your name, email address and delivery addresses under Account settings.",
        "To reset your password, click Forgot password on the sign-in page and follow the "
        "link we email you; the link expires after 30 minutes.",
        "We strongly recommend turning on two-factor authentication with an authenticator app.",
        "Membership tiers are free, plus and pro; you can upgrade or downgrade at any time "
        "and the change applies from the next billing cycle.",
        "Plus members get free returns, and pro members additionally get free express "
        "delivery and extended warranty.",
        "If you notice an order you did not place, change your password immediately and "
        "contact support.",
        "You can download a copy of your data, including order history, from the Privacy section.",
        "Closing your account is permanent and deletes saved addresses and payment methods "
        "after 30 days.",
        "Marketing emails can be turned off in Notification preferences without affecting "
        "order updates.",
        "Accounts with no sign-in for 24 months are deactivated after an email reminder.",
    ],
    "payment": [
        "We accept Visa, Mastercard, American Express, PayPal, Apple Pay and Google Pay.",
        "Your card is authorised when you place the order and charged when the order ships.",
        "Payments can be declined by your bank for security checks, an incorrect billing "
        "address, or insufficient funds.",
        "If a payment is declined, the order is held for 24 hours so you can update the "
        "payment method.",
        "Buy now, pay later lets you split purchases over 50 into three interest-free instalments.",
        "Invoices with VAT are available to download from each order page once the order "
        "has shipped.",
        "Gift cards never expire and can be combined with one other payment method.",
        "Prices are shown in your local currency; your bank may add a conversion fee for "
        "foreign cards.",
        "We never store your full card number; payments are processed by a PCI DSS "
        "certified provider.",
        "Duplicate authorisations on your statement are released automatically by your bank "
        "within a few days.",
    ],
}

FIRST_NAMES: tuple[str, ...] = (
    "Ava", "Liam", "Noah", "Emma", "Olivia", "Mateo", "Sofia", "Lucas", "Mia", "Ethan",
    "Amara", "Yuki", "Hannah", "Leon", "Chloe", "Arjun", "Priya", "Omar", "Layla", "Jonas",
    "Elena", "Marco", "Freya", "Kenji", "Zara", "Diego", "Ingrid", "Samuel", "Nora", "Tariq",
    "Isla", "Felix", "Ana", "Hugo", "Maya", "Ravi", "Grace", "Luca", "Aisha", "Finn",
)  # fmt: skip
LAST_NAMES: tuple[str, ...] = (
    "Smith", "Garcia", "Müller", "Rossi", "Tanaka", "Kowalski", "Nguyen", "Johansson",
    "Dubois", "Silva", "Patel", "Kim", "Okafor", "Jansen", "Hughes", "Novak", "Haddad",
    "Lopez", "Fischer", "Bianchi", "Sato", "Andersen", "Martin", "Costa", "Singh", "Walsh",
    "Moreau", "Berg", "Ibrahim", "Reyes",
)  # fmt: skip
COUNTRIES: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "CA", "AU", "NL", "SE", "ES", "IT", "JP", "BR", "IN", "MX", "PL",
)  # fmt: skip
COUNTRY_WEIGHTS: tuple[float, ...] = (
    30, 12, 10, 7, 6, 4, 4, 3, 5, 4, 4, 3, 4, 2, 2,
)  # fmt: skip
TIERS: tuple[str, ...] = ("free", "plus", "pro")
TIER_WEIGHTS: tuple[float, ...] = (0.70, 0.22, 0.08)
TIER_ACTIVITY: tuple[float, ...] = (1.0, 1.8, 3.0)
STATUSES: tuple[str, ...] = ("completed", "refunded", "cancelled")
STATUS_WEIGHTS: tuple[float, ...] = (0.92, 0.05, 0.03)
QUANTITY_WEIGHTS: tuple[float, ...] = (0.62, 0.20, 0.10, 0.05, 0.03)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _floor_hour(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


def _as_utc(dt: datetime) -> datetime:
    """Naive datetimes are taken to be UTC; aware ones are converted to UTC."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _to_us(dt: datetime) -> int:
    """Exact microseconds since the Unix epoch (no float rounding)."""
    return (_as_utc(dt) - EPOCH) // timedelta(microseconds=1)


def _ts_array(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), type=TS_TYPE)


def _probs(weights: tuple[float, ...] | list[float] | np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def _pick(rng: np.random.Generator, items: list[str] | tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _sample(rng: np.random.Generator, items: list[str], k: int) -> list[str]:
    idx = rng.choice(len(items), size=min(k, len(items)), replace=False)
    return [items[int(i)] for i in idx]


def _word_count(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def _compose(
    rng: np.random.Generator,
    head: str,
    optional: list[str],
    pinned: str | None,
    lo: int,
    hi: int,
) -> str:
    """Join ``head`` plus a random prefix of ``optional`` into lo..hi words.

    ``pinned`` (if given) is always included, at a random position after ``head``.
    """
    target = int(rng.integers(lo + 10, hi - 25))
    fixed = [head] + ([pinned] if pinned else [])
    chosen: list[str] = []
    for sentence in optional:
        if _word_count(fixed + chosen) >= target:
            break
        chosen.append(sentence)
    while len(chosen) > 1 and _word_count(fixed + chosen) > hi:
        chosen.pop()
    if pinned:
        chosen.insert(int(rng.integers(len(chosen) + 1)), pinned)
    text = " ".join([head, *chosen])
    n_words = len(text.split())
    if not lo <= n_words <= hi:  # pragma: no cover - guarded by the vocabulary sizes
        raise RuntimeError(f"composed text has {n_words} words, expected {lo}..{hi}")
    return text


def _write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path, compression="zstd")
    return path


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def _unique_skus(rng: np.random.Generator, n: int) -> list[str]:
    codes = rng.choice(26**3 * 10_000, size=n, replace=False)
    letters_code, digits = np.divmod(codes, 10_000)
    out = []
    for lc, d in zip(letters_code.tolist(), digits.tolist(), strict=True):
        a, rest = divmod(lc, 26 * 26)
        b, c = divmod(rest, 26)
        out.append(f"SKU-{chr(65 + a)}{chr(65 + b)}{chr(65 + c)}-{d:04d}")
    return out


def _product_description(
    rng: np.random.Generator, category: str, brand: str, name: str, noun: str, sku: str
) -> str:
    v = VOCAB[category]
    adj = _pick(rng, v["adjectives"])
    f1, f2, f3, f4 = _sample(rng, v["features"], 4)
    use1, use2, use3 = _sample(rng, v["uses"], 3)
    aud1, aud2 = _sample(rng, v["audience"], 2)
    benefit1, benefit2 = _sample(rng, v["benefits"], 2)
    material = _pick(rng, v["materials"])
    article = "an" if adj[0] in "aeiou" else "a"
    head = (
        f"The {name} is {article} {adj} {noun} from the {brand} {category} range, built for {use1}."
    )
    optional = [
        f"Key features include {f1}, {f2}, and {f3}.",
        f"Made from {material}, it {benefit1}.",
        f"It is a great choice for {use2} as well as {use3}.",
        f"Designed with {aud1} and {aud2} in mind, it {benefit2}.",
        f"You also get {f4}.",
    ]
    extras = list(v["extras"]) + [s.format(category=category, brand=brand) for s in GENERIC_EXTRAS]
    order = rng.permutation(len(optional))
    extra_order = rng.permutation(len(extras))
    sentences = [optional[int(i)] for i in order] + [extras[int(i)] for i in extra_order]
    pinned = _pick(
        rng,
        (
            f"Product code: {sku}.",
            f"Quote product code {sku} when contacting support.",
            f"Manufacturer part number {sku}.",
        ),
    )
    return _compose(rng, head, sentences, pinned, lo=60, hi=150)


def _products(rng: np.random.Generator, n: int, end_us: int) -> pa.Table:
    cat_idx = rng.integers(len(CATEGORIES), size=n)
    medians = np.array([CATEGORY_MEDIAN_PRICE[c] for c in CATEGORIES])[cat_idx]
    raw = medians * rng.lognormal(0.0, 0.6, size=n)
    price = np.maximum(np.floor(raw), 2.0) + 0.99
    skus = _unique_skus(rng, n)

    names: list[str] = []
    brands: list[str] = []
    descriptions: list[str] = []
    for i in range(n):
        category = CATEGORIES[int(cat_idx[i])]
        v = VOCAB[category]
        brand = _pick(rng, v["brands"])
        noun = _pick(rng, v["nouns"])
        model = _pick(rng, MODEL_NAMES)
        gen = int(rng.integers(1, 10))
        title = " ".join(w[:1].upper() + w[1:] for w in noun.split())
        name = f"{brand} {model} {gen} {title}"
        names.append(name)
        brands.append(brand)
        descriptions.append(_product_description(rng, category, brand, name, noun, skus[i]))

    # Most products were touched in the last 120 days; ~5% in the last 24 hours.
    age = rng.uniform(0.0, 120.0 * US_PER_DAY, size=n)
    recent = rng.random(n) < 0.05
    age[recent] = rng.uniform(0.0, US_PER_DAY, size=int(recent.sum()))
    updated = end_us - 1 - age.astype(np.int64)

    return pa.table(
        {
            "product_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "name": pa.array(names, type=pa.string()),
            "category": pc.take(pa.array(CATEGORIES, type=pa.string()), pa.array(cat_idx)),
            "brand": pa.array(brands, type=pa.string()),
            "price": pa.array(price, type=pa.float64()),
            "description": pa.array(descriptions, type=pa.string()),
            "sku": pa.array(skus, type=pa.string()),
            "updated_at": _ts_array(updated),
        }
    )


def _orders(
    rng: np.random.Generator,
    n: int,
    n_users: int,
    tier_idx: np.ndarray,
    prices: np.ndarray,
    end_us: int,
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Return the orders table plus (user index, ts) arrays for deriving signup times."""
    n_products = len(prices)

    # Per-user behaviour: heavy-tailed activity, churn, and big spenders.
    activity = rng.lognormal(0.0, 1.1, size=n_users) * np.asarray(TIER_ACTIVITY)[tier_idx]
    churned = rng.random(n_users) < CHURNED_USER_SHARE
    whale = rng.random(n_users) < WHALE_USER_SHARE
    activity[whale] *= 2.0
    premium_p = np.where(whale, 0.7, 0.04)

    user_idx = rng.choice(n_users, size=n, p=activity / activity.sum())

    # Order age before `end`: 60% uniform over 90 days, 40% exponential (recent-heavy).
    horizon = ORDER_HISTORY_DAYS * US_PER_DAY
    age = rng.uniform(0.0, horizon, size=n)
    recent = rng.random(n) < 0.4
    age[recent] = rng.exponential(12.0 * US_PER_DAY, size=int(recent.sum())) % horizon
    # Churned users: no orders in the last 30 days.
    churn_window = CHURN_DAYS * US_PER_DAY
    move = churned[user_idx] & (age < churn_window)
    age[move] = rng.uniform(churn_window, horizon, size=int(move.sum()))
    ts = end_us - 1 - age.astype(np.int64)

    # Products: Zipf-like popularity, big spenders lean towards the priciest 20%.
    popularity = 1.0 / np.arange(1, n_products + 1) ** 0.9
    popularity = popularity[rng.permutation(n_products)]
    product_idx = rng.choice(n_products, size=n, p=popularity / popularity.sum())
    expensive = np.flatnonzero(prices >= np.quantile(prices, 0.8))
    premium = rng.random(n) < premium_p[user_idx]
    product_idx[premium] = expensive[rng.integers(len(expensive), size=int(premium.sum()))]

    quantity = rng.choice(5, size=n, p=_probs(QUANTITY_WEIGHTS)).astype(np.int64) + 1
    by_whale = whale[user_idx]
    quantity[by_whale] = np.minimum(quantity[by_whale] + 1, 5)
    discount = rng.choice(
        np.array([0.0, 0.05, 0.10, 0.20]), size=n, p=_probs((0.75, 0.10, 0.10, 0.05))
    )
    amount = np.maximum(np.round(prices[product_idx] * quantity * (1.0 - discount), 2), 0.01)
    status_idx = rng.choice(len(STATUSES), size=n, p=_probs(STATUS_WEIGHTS))

    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    user_idx = user_idx[order]
    table = pa.table(
        {
            "order_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "user_id": pa.array(user_idx.astype(np.int64) + 1),
            "product_id": pa.array(product_idx[order].astype(np.int64) + 1),
            "amount": pa.array(amount[order], type=pa.float64()),
            "quantity": pa.array(quantity[order]),
            "status": pc.take(pa.array(STATUSES, type=pa.string()), pa.array(status_idx[order])),
            "ts": _ts_array(ts),
        }
    )
    return table, user_idx, ts


def _users(
    rng: np.random.Generator,
    n: int,
    tier_idx: np.ndarray,
    order_user_idx: np.ndarray,
    order_ts: np.ndarray,
    end_us: int,
) -> pa.Table:
    first = rng.integers(len(FIRST_NAMES), size=n)
    last = rng.integers(len(LAST_NAMES), size=n)
    names = [f"{FIRST_NAMES[a]} {LAST_NAMES[b]}" for a, b in zip(first, last, strict=True)]
    country_idx = rng.choice(len(COUNTRIES), size=n, p=_probs(COUNTRY_WEIGHTS))

    # Signup strictly before the first order (orders are sorted by ts, so the first
    # occurrence of each user is their first order); users without orders sign up any
    # time in the last two years.
    earliest = end_us - 730 * US_PER_DAY
    signup = end_us - 1 - rng.uniform(0.0, 730.0 * US_PER_DAY, size=n).astype(np.int64)
    has_orders, first_pos = np.unique(order_user_idx, return_index=True)
    lead = rng.exponential(45.0 * US_PER_DAY, size=len(has_orders)).astype(np.int64)
    signup[has_orders] = np.maximum(order_ts[first_pos] - 1 - lead, earliest)

    return pa.table(
        {
            "user_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "name": pa.array(names, type=pa.string()),
            "tier": pc.take(pa.array(TIERS, type=pa.string()), pa.array(tier_idx)),
            "country": pc.take(pa.array(COUNTRIES, type=pa.string()), pa.array(country_idx)),
            "signup_ts": _ts_array(signup),
        }
    )


def _articles(rng: np.random.Generator, n: int, end_us: int) -> pa.Table:
    combos: list[tuple[str, str]] = [(t, c) for t in CATEGORY_TOPICS for c in CATEGORIES]
    combos += [(t, "general") for t in GENERAL_TOPICS]
    # Cover every (topic, category) once, then draw the rest at random.
    picks = list(range(min(n, len(combos))))
    picks += rng.integers(len(combos), size=max(0, n - len(combos))).tolist()

    titles: list[str] = []
    bodies: list[str] = []
    categories: list[str] = []
    for k in picks:
        topic, category = combos[k]
        facts = POLICIES.get(category, {"label": "all products"})
        title = _pick(rng, TITLE_TEMPLATES[topic]).format(**facts)
        sentences = [s.format(**facts) for s in ARTICLE_SENTENCES[topic]]
        head, rest = sentences[0], sentences[1:]
        order = rng.permutation(len(rest))
        body = _compose(rng, head, [rest[int(i)] for i in order], None, lo=80, hi=200)
        titles.append(title[0].upper() + title[1:])
        bodies.append(body)
        categories.append(category)

    age = rng.uniform(0.0, 365.0 * US_PER_DAY, size=n).astype(np.int64)
    return pa.table(
        {
            "article_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "title": pa.array(titles, type=pa.string()),
            "body": pa.array(bodies, type=pa.string()),
            "category": pa.array(categories, type=pa.string()),
            "updated_at": _ts_array(end_us - 1 - age),
        }
    )


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def generate(
    out_dir: str | Path,
    *,
    users: int = 1000,
    products: int = 2000,
    orders: int = 50_000,
    articles: int = 200,
    seed: int = 7,
    end: datetime | None = None,
) -> dict[str, Path]:
    """Write the quickstart tables into ``out_dir`` and return ``{table_name: path}``.

    ``end`` defaults to the current UTC time floored to the hour; naive datetimes are
    treated as UTC. Every timestamp in the output is strictly earlier than ``end``.
    """
    if min(users, products, orders, articles) < 1:
        raise ValueError("users, products, orders and articles must all be >= 1")
    end_dt = _floor_hour(datetime.now(UTC)) if end is None else _as_utc(end)
    end_us = _to_us(end_dt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # Independent streams per table: changing one size leaves the other tables unchanged.
    ss_products, ss_users, ss_orders, ss_articles = np.random.SeedSequence(seed).spawn(4)
    rng_users = np.random.default_rng(ss_users)

    products_table = _products(np.random.default_rng(ss_products), products, end_us)
    prices = products_table.column("price").to_numpy()
    tier_idx = rng_users.choice(len(TIERS), size=users, p=_probs(TIER_WEIGHTS))
    orders_table, order_user_idx, order_ts = _orders(
        np.random.default_rng(ss_orders), orders, users, tier_idx, prices, end_us
    )
    users_table = _users(rng_users, users, tier_idx, order_user_idx, order_ts, end_us)
    articles_table = _articles(np.random.default_rng(ss_articles), articles, end_us)

    return {
        "orders": _write(orders_table, out / "orders.parquet"),
        "products": _write(products_table, out / "products.parquet"),
        "users": _write(users_table, out / "users.parquet"),
        "support_articles": _write(articles_table, out / "support_articles.parquet"),
    }


def _parse_end(value: str) -> datetime:
    try:
        return _as_utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 datetime: {value!r}") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the contextkit e-commerce quickstart data set (Parquet)."
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--articles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--end",
        type=_parse_end,
        default=None,
        help="exclusive upper bound for all timestamps, ISO 8601 (default: now, UTC, "
        "floored to the hour)",
    )
    args = parser.parse_args(argv)
    end = args.end if args.end is not None else _floor_hour(datetime.now(UTC))

    started = time.perf_counter()
    paths = generate(
        args.out,
        users=args.users,
        products=args.products,
        orders=args.orders,
        articles=args.articles,
        seed=args.seed,
        end=end,
    )
    elapsed = time.perf_counter() - started
    for name, path in paths.items():
        rows = pq.ParquetFile(path).metadata.num_rows
        print(f"{name:<17} {rows:>9} rows  {path}")
    print(f"end={end.isoformat()} seed={args.seed} ({elapsed:.2f}s)")


if __name__ == "__main__":
    main()
