from titanium.cli import main

main()
